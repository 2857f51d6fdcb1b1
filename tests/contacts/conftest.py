"""Fixtures for contacts, lists, segments and double opt-in: a
database in a temporary directory, and the API in-process over it
(httpx's ASGI transport, a real spool, as ``tests/api`` does)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from postroom import config as config_mod
from postroom.api import keys
from postroom.api.app import create_app
from postroom.api.context import ApiContext
from postroom.queue.spool import Spool
from postroom.queue.store import QueueStore
from postroom.store import db
from postroom.testing.api import NOW, Api


def make_config(tmp_path: Path) -> config_mod.Config:
    return config_mod.load(None, environ={
        "POSTROOM_DATA_DIR": str(tmp_path / "data"),
        "POSTROOM_HOSTNAME": "mx.postroom.test",
        "POSTROOM_CAMPAIGNS__SENDER": "news@sender.test",
        "POSTROOM_CAMPAIGNS__CONFIRM_URL_BASE": "https://lists.sender.test/",
    })


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    made = db.create_engine(make_config(tmp_path).database_url)
    yield made
    made.dispose()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    config = make_config(tmp_path)
    engine = db.create_engine(config.database_url)
    spool = Spool(config.spool_path, engine, name="w1", fsync=False)
    await spool.start()
    context = ApiContext(config, engine, spool, listener="http:8025",
                         clock=lambda: NOW)

    def make_key(*scopes: str, name: str = "test") -> str:
        with engine.begin() as conn:
            return keys.create(conn, name, scopes or (keys.MARKETING,)).plaintext

    transport = httpx.ASGITransport(app=create_app(context),
                                    client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport,
                                 base_url="http://api.test") as client:
        yield Api(client, engine, QueueStore(engine, config.spool_path),
                  context, make_key)
    await spool.close()
    engine.dispose()
