"""Property-based fuzzing of the HTTP API from its own OpenAPI document
(schemathesis): for every operation, generated requests, valid and
not, with a key that may do everything. The property: never a 5xx (an
exception that escaped to the error handler), whatever the input.

The app runs in-process on a real spool and database in a temporary
directory; the spool's event loop runs in a thread of its own, since
schemathesis drives the ASGI app from its own loop. Bounded: a fixed
number of examples per operation.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402

from postroom import config as config_mod  # noqa: E402
from postroom.api import keys  # noqa: E402
from postroom.api.app import create_app  # noqa: E402
from postroom.api.context import ApiContext  # noqa: E402
from postroom.queue.spool import Spool  # noqa: E402
from postroom.store import db  # noqa: E402

_root = Path(tempfile.mkdtemp(prefix="postroom-fuzz-"))
_config = config_mod.load(None, environ={
    "POSTROOM_DATA_DIR": str(_root / "data"),
    "POSTROOM_HOSTNAME": "mx.postroom.test",
})
_engine = db.create_engine(_config.database_url)
_loop = asyncio.new_event_loop()
_thread = threading.Thread(target=_loop.run_forever, daemon=True)
_thread.start()
_spool = Spool(_config.spool_path, _engine, name="w1", fsync=False)
asyncio.run_coroutine_threadsafe(_spool.start(), _loop).result(10)
_app = create_app(ApiContext(_config, _engine, _spool, policy=None,
                             listener="http:8025"))
with _engine.begin() as _conn:
    KEY = keys.create(_conn, "fuzz", (keys.FULL,)).plaintext

schema = schemathesis.openapi.from_asgi("/openapi.json", _app)


@pytest.fixture(scope="module", autouse=True)
def _teardown() -> Iterator[None]:
    yield
    asyncio.run_coroutine_threadsafe(_spool.close(), _loop).result(10)
    _loop.call_soon_threadsafe(_loop.stop)
    _thread.join(10)
    _engine.dispose()
    shutil.rmtree(_root, ignore_errors=True)


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_makes_the_api_fail(case: object) -> None:
    case.headers = {**(case.headers or {}), "Authorization": f"Bearer {KEY}"}  # type: ignore[attr-defined]
    response = case.call()  # type: ignore[attr-defined]
    assert response.status_code < 500, (
        case.method, case.path, response.status_code, response.text[:300]  # type: ignore[attr-defined]
    )
