"""The API in-process: a real spool and database in a temporary
directory, the ASGI app called through httpx's ASGI transport (no
socket), and helpers to make keys and read back what was queued."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from postroom import config as config_mod
from postroom.api import keys
from postroom.api.app import create_app
from postroom.api.context import ApiContext
from postroom.queue.spool import Spool
from postroom.queue.store import QueueStore
from postroom.server.policy import RelayPolicy
from postroom.store import db
from postroom.testing.api import NOW, Api


def make_config(tmp_path: Path, **http: object) -> config_mod.Config:
    config = config_mod.load(
        None,
        environ={
            "POSTROOM_DATA_DIR": str(tmp_path / "data"),
            "POSTROOM_HOSTNAME": "mx.postroom.test",
        },
    )
    for name, value in http.items():
        setattr(config.http, name, value)
    return config


@pytest.fixture
async def api(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Api]:
    marker = request.node.get_closest_marker("http")
    settings = dict(marker.kwargs) if marker else {}
    local = settings.pop("local_domains", None)
    config = make_config(tmp_path, **settings)
    engine = db.create_engine(config.database_url)
    spool = Spool(config.spool_path, engine, name="w1", fsync=False)
    await spool.start()
    policy = RelayPolicy(local, []) if local else None
    context = ApiContext(
        config, engine, spool, policy=policy, listener="http:8025",
        clock=lambda: NOW,
    )
    app = create_app(context)

    def make_key(*scopes: str, name: str = "test") -> str:
        with engine.begin() as conn:
            return keys.create(conn, name, scopes or (keys.MAIL_SEND,)).plaintext

    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as c:
        yield Api(c, engine, QueueStore(engine, config.spool_path), context, make_key)
    await spool.close()
    engine.dispose()
