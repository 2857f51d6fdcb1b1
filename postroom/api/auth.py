"""Bearer authentication and scopes, as FastAPI dependencies.

``Depends(require(keys.MAIL_SEND))`` on an endpoint makes it answer,
before it reads the body:

- 401 when there is no ``Authorization: Bearer <key>`` header, or the
  key is malformed, unknown, wrong or revoked (one answer for all, so
  the reply does not say which ids exist);
- 403 when the key is good but lacks the scope;

and otherwise hands the endpoint the key's row. The messages are
SendGrid's, which its clients show to users as they are.

The key is checked in a worker thread (a SQLite read and a SHA-256,
tens of microseconds, but the database may be busy with a commit).
``last_used_at`` is written at most once a minute per key: a write per
request would put a database transaction on every send.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated

import sqlalchemy as sa
from fastapi import Depends, Request

from postroom import logs
from postroom.api import keys
from postroom.api.errors import ApiError
from postroom.store import api_keys as table
from postroom.store.api_keys import ApiKey

log = logging.getLogger(__name__)

UNAUTHORIZED = "The provided authorization grant is invalid, expired, or revoked"
MISSING = "authorization required"
FORBIDDEN = "access forbidden"
# How stale last_used_at may get.
TOUCH_INTERVAL = dt.timedelta(seconds=60)


def require(scope: str) -> Callable[[Request], Awaitable[ApiKey]]:
    """A dependency that admits keys allowed *scope*."""

    async def dependency(request: Request) -> ApiKey:
        engine: sa.Engine = request.app.state.api.engine
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, [(MISSING, None)], _challenge())
        key = await asyncio.to_thread(_check, engine, token.strip())
        if key is None:
            client = request.client.host if request.client else ""
            log.warning(logs.event("auth", client=client, result="failed", via="api"))
            raise ApiError(401, [(UNAUTHORIZED, None)], _challenge())
        if not keys.allows(key, scope):
            raise ApiError(403, [(FORBIDDEN, None)])
        return key

    return dependency


# The keys endpoints take, as annotations: ``key: MailSendKey``.
MailSendKey = Annotated[ApiKey, Depends(require(keys.MAIL_SEND))]
ApiKeysKey = Annotated[ApiKey, Depends(require(keys.API_KEYS))]
MarketingKey = Annotated[ApiKey, Depends(require(keys.MARKETING))]
EventsKey = Annotated[ApiKey, Depends(require(keys.EVENTS_READ))]
WebhooksKey = Annotated[ApiKey, Depends(require(keys.WEBHOOKS))]
SuppressionsKey = Annotated[ApiKey, Depends(require(keys.SUPPRESSIONS))]


def _challenge() -> dict[str, str]:
    # RFC 6750 §3: a 401 names the scheme it wants.
    return {"WWW-Authenticate": 'Bearer realm="postroom"'}


def _check(engine: sa.Engine, token: str) -> ApiKey | None:
    with engine.connect() as conn:
        key = keys.verify(conn, token)
    if key is None:
        return None
    now = table.now()
    if key.last_used_at is None or now - key.last_used_at >= TOUCH_INTERVAL:
        try:
            with engine.begin() as conn:
                table.touch(conn, key.id, now)
        except sa.exc.SQLAlchemyError as e:
            # The request itself is fine; a busy database must not
            # fail it over a bookkeeping write.
            log.warning(logs.event("auth", key=key.id, result="touch-failed",
                                   reason=type(e).__name__))
    return key
