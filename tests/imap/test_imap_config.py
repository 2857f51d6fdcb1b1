"""The ``[imap]`` settings: defaults, listeners, validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from postroom import config
from postroom.cli.serve import all_listeners
from postroom.config import Listener
from postroom.errors import ConfigError


def test_defaults_serve_imap_on_loopback_dev_ports() -> None:
    loaded = config.load(environ={})

    assert loaded.imap.enabled
    assert loaded.imap.listeners == [
        Listener("imap", "127.0.0.1", 2143),
        Listener("imaps", "127.0.0.1", 2993),
    ]
    assert not loaded.imap.allow_plaintext_auth
    # RFC 3501 §5.4: an autologout timer runs at least 30 minutes.
    assert loaded.imap.idle_timeout >= 1800.0
    assert loaded.imap.idle_poll_interval <= 1.0
    kinds = [lst.kind for lst in all_listeners(loaded)]
    # The mailbox services' listeners, then the HTTP API's.
    assert kinds[-3:] == ["imap", "imaps", "http"]


def test_bench_configuration_loads(tmp_path: Path) -> None:
    # bench/mailbox.py writes exactly these names.
    path = tmp_path / "postroom.toml"
    path.write_text(
        "[imap]\n"
        'listeners = [{kind = "imap", address = "127.0.0.1:3143"}]\n'
        "allow_plaintext_auth = true\n"
    )

    loaded = config.load(path, environ={})

    assert loaded.imap.listeners == [Listener("imap", "127.0.0.1", 3143)]
    assert loaded.imap.allow_plaintext_auth


def test_listeners_from_the_environment() -> None:
    loaded = config.load(
        environ={"POSTROOM_IMAP__LISTENERS": "imap=[::1]:143,imaps=0.0.0.0:993"}
    )

    assert loaded.imap.listeners == [
        Listener("imap", "::1", 143),
        Listener("imaps", "0.0.0.0", 993),
    ]


def test_disabled_imap_binds_nothing() -> None:
    loaded = config.load(environ={"POSTROOM_IMAP__ENABLED": "false"})

    assert not any(lst.kind.startswith("imap") for lst in all_listeners(loaded))


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"POSTROOM_IMAP__LISTENERS": "pop3=127.0.0.1:143"}, "imap.listeners: kind"),
        (
            {"POSTROOM_IMAP__LISTENERS": "imap=127.0.0.1:2110"},
            "imap.listeners: 127.0.0.1:2110 is already in use",
        ),
        ({"POSTROOM_IMAP__IDLE_TIMEOUT": "0"}, "imap.idle_timeout"),
        ({"POSTROOM_IMAP__IDLE_POLL_INTERVAL": "-1"}, "imap.idle_poll_interval"),
        ({"POSTROOM_IMAP__MAX_CONNECTIONS": "0"}, "imap.max_connections"),
    ],
)
def test_bad_settings_name_the_setting(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.load(environ=environ)
