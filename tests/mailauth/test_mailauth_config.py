"""The [mailauth] settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from postroom import config
from postroom.errors import ConfigError
from postroom.mailauth.inbound import InboundAuth


def test_defaults_check_and_refuse_nothing() -> None:
    settings = config.load(environ={}).mailauth

    assert settings.enabled
    assert not (
        settings.reject_dmarc or settings.reject_spf_fail or settings.defer_temperror
    )
    assert settings.nameservers == []


def test_file_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "postroom.toml"
    path.write_text('[mailauth]\nreject_dmarc = true\nnameservers = ["[::1]:5353"]\n')

    loaded = config.load(path, environ={"POSTROOM_MAILAUTH__DEFER_TEMPERROR": "yes"})

    assert loaded.mailauth.reject_dmarc
    assert loaded.mailauth.defer_temperror
    assert loaded.mailauth.nameservers == ["[::1]:5353"]


def test_a_nameserver_must_be_an_address() -> None:
    with pytest.raises(ConfigError, match=r"^mailauth\.nameservers: not an IP"):
        config.load(environ={"POSTROOM_MAILAUTH__NAMESERVERS": "dns.example.net"})


def test_off_or_without_a_relay_listener_builds_nothing() -> None:
    off = config.load(environ={"POSTROOM_MAILAUTH__ENABLED": "false"})
    no_relay = config.load(
        environ={"POSTROOM_SMTP__LISTENERS": "submission=127.0.0.1:2587"}
    )

    assert InboundAuth.from_config(off) is None
    assert InboundAuth.from_config(no_relay) is None
