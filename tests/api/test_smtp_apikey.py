"""SMTP AUTH with an API key: user ``apikey``, the key as password."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from postroom.api import keys
from postroom.server.auth import Authenticator
from postroom.store import api_keys as table
from postroom.store import db


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    made = db.create_engine(f"sqlite:///{tmp_path / 'postroom.db'}")
    yield made
    made.dispose()


def new_key(engine: sa.Engine, *scopes: str) -> str:
    with engine.begin() as conn:
        return keys.create(conn, "smtp", scopes).plaintext


async def test_smtp_takes_a_live_mail_send_key(engine: sa.Engine) -> None:
    smtp = Authenticator(engine, api_keys=True)
    key = new_key(engine, keys.MAIL_SEND)
    assert await smtp.verify("apikey", key)
    assert await smtp.verify("apikey", new_key(engine, keys.FULL))
    assert not await smtp.verify("apikey", key + "x")
    assert not await smtp.verify("apikey", "SG.nothing.here")
    assert not await smtp.verify("apikey", new_key(engine, keys.API_KEYS))
    assert not await smtp.verify("APIKEY", key)  # the name is exact

    with engine.begin() as conn:
        table.revoke(conn, keys.split(key)[0])  # type: ignore[index]
    assert not await smtp.verify("apikey", key)


async def test_mailbox_logins_never_take_keys(engine: sa.Engine) -> None:
    # POP3 and IMAP get an Authenticator without api_keys.
    plain = Authenticator(engine)
    assert not await plain.verify("apikey", new_key(engine, keys.FULL))
