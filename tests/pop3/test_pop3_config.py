"""The ``[pop3]`` settings: defaults, listeners, validation."""

from __future__ import annotations

import pytest

from postroom import config
from postroom.cli.serve import all_listeners
from postroom.config import Listener
from postroom.errors import ConfigError


def test_defaults_serve_pop3_on_loopback_dev_ports() -> None:
    loaded = config.load(environ={})

    assert loaded.pop3.enabled
    assert loaded.pop3.listeners == [
        Listener("pop3", "127.0.0.1", 2110),
        Listener("pop3s", "127.0.0.1", 2995),
    ]
    assert not loaded.pop3.allow_plaintext_auth
    assert loaded.pop3.loopback_is_secure
    assert loaded.pop3.idle_timeout == 600.0  # RFC 1939 §3: 10 minutes
    assert [lst.kind for lst in all_listeners(loaded)] == [
        "relay", "submission", "submissions", "pop3", "pop3s", "imap", "imaps",
        "http",
    ]


def test_listeners_from_the_environment() -> None:
    loaded = config.load(
        environ={"POSTROOM_POP3__LISTENERS": "pop3=[::1]:110,pop3s=0.0.0.0:995"}
    )

    assert loaded.pop3.listeners == [
        Listener("pop3", "::1", 110),
        Listener("pop3s", "0.0.0.0", 995),
    ]


def test_disabled_pop3_binds_nothing() -> None:
    loaded = config.load(environ={"POSTROOM_POP3__ENABLED": "false"})

    assert all(lst.kind not in ("pop3", "pop3s") for lst in all_listeners(loaded))


@pytest.mark.parametrize(
    "environ, message",
    [
        (
            {"POSTROOM_POP3__LISTENERS": "relay=127.0.0.1:110"},
            "pop3.listeners: kind must be one of pop3, pop3s, got 'relay'",
        ),
        (
            {"POSTROOM_SMTP__LISTENERS": "pop3=127.0.0.1:110"},
            "smtp.listeners: kind must be one of relay, submission, "
            "submissions, got 'pop3'",
        ),
        (
            {"POSTROOM_POP3__LISTENERS": "pop3=127.0.0.1:2525"},
            "pop3.listeners: 127.0.0.1:2525 is already in use by another listener",
        ),
        (
            {"POSTROOM_POP3__IDLE_TIMEOUT": "0"},
            "pop3.idle_timeout: must be greater than 0",
        ),
        (
            {"POSTROOM_POP3__MAX_CONNECTIONS": "0"},
            "pop3.max_connections: must be at least 1",
        ),
    ],
)
def test_bad_settings_are_one_line(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        config.load(environ=environ)

    assert str(error.value) == message
