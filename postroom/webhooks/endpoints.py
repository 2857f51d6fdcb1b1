"""Webhook endpoints and replays: the rows behind the API, the CLI and
the sender (tables in ``store/webhooks.py``).

A new endpoint starts at the newest event: it gets what happens from
then on, and older events only by a replay. A replay asks for every
event of a time range again, for one endpoint or all; it is kept as a
row until the sender has posted the whole range, so it survives a
restart like the live stream does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa

from postroom import events
from postroom.store.webhooks import webhook_replays, webhooks
from postroom.webhooks import signing

_W = webhooks
_R = webhook_replays


@dataclass(frozen=True)
class Endpoint:
    id: int
    url: str
    enabled: bool
    secret: str
    # None: every kind.
    kinds: tuple[str, ...] | None
    cursor: int
    next_try: float
    failures: int
    failing_since: float | None
    last_error: str | None
    created: float

    def wants(self, kind: str) -> bool:
        return self.kinds is None or kind in self.kinds


def check_url(url: str) -> str:
    """*url* if it is an absolute http(s) URL; ValueError otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http or https URL: {url!r}")
    return url


def check_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    unknown = [k for k in kinds if k not in events.KINDS]
    if unknown:
        raise ValueError(
            f"unknown event kind {unknown[0]!r} (known: {', '.join(events.KINDS)})"
        )
    return tuple(k for k in events.KINDS if k in kinds)


def create(
    conn: sa.Connection,
    url: str,
    *,
    kinds: Sequence[str] | None = None,
    enabled: bool = True,
    now: float | None = None,
) -> Endpoint:
    """Add an endpoint (URL and kinds checked: ValueError)."""
    check_url(url)
    chosen = check_kinds(kinds) if kinds is not None else None
    result = conn.execute(
        _W.insert().values(
            url=url,
            enabled=enabled,
            secret=signing.new_secret(),
            kinds=json.dumps(chosen) if chosen is not None else None,
            cursor=events.last_id(conn),
            created=time.time() if now is None else now,
        )
    )
    key = result.inserted_primary_key
    assert key is not None
    found = get(conn, int(key[0]))
    assert found is not None
    return found


def list_all(conn: sa.Connection) -> list[Endpoint]:
    return [_endpoint(r) for r in conn.execute(sa.select(_W).order_by(_W.c.id))]


def get(conn: sa.Connection, webhook_id: int) -> Endpoint | None:
    found = conn.execute(sa.select(_W).where(_W.c.id == webhook_id)).first()
    return _endpoint(found) if found is not None else None


def update(
    conn: sa.Connection,
    webhook_id: int,
    *,
    url: str | None = None,
    enabled: bool | None = None,
    kinds: Sequence[str] | None = None,
) -> Endpoint | None:
    """Change what is given; None when there is no such endpoint."""
    values: dict[str, Any] = {}
    if url is not None:
        values["url"] = check_url(url)
    if enabled is not None:
        values["enabled"] = enabled
    if kinds is not None:
        values["kinds"] = json.dumps(check_kinds(kinds))
    if values:
        # A changed endpoint gets a fresh start at retrying.
        values.update(next_try=0.0, failures=0, failing_since=None)
        conn.execute(_W.update().where(_W.c.id == webhook_id).values(**values))
    return get(conn, webhook_id)


def delete(conn: sa.Connection, webhook_id: int) -> bool:
    conn.execute(_R.delete().where(_R.c.webhook_id == webhook_id))
    return bool(conn.execute(_W.delete().where(_W.c.id == webhook_id)).rowcount)


def replay(
    conn: sa.Connection,
    start: float,
    end: float,
    *,
    webhook_id: int | None = None,
    now: float | None = None,
) -> list[int]:
    """Post the events of ``start <= time < end`` again to endpoint
    *webhook_id*, or to every enabled one; return the replays' ids
    (empty when there is no such endpoint)."""
    if end <= start:
        raise ValueError("the end of a replay must come after its start")
    query = sa.select(_W.c.id)
    if webhook_id is not None:
        query = query.where(_W.c.id == webhook_id)
    else:
        query = query.where(_W.c.enabled)
    made = []
    when = time.time() if now is None else now
    for (target,) in conn.execute(query).all():
        result = conn.execute(
            _R.insert().values(webhook_id=target, start=start, end=end, created=when)
        )
        key = result.inserted_primary_key
        assert key is not None
        made.append(int(key[0]))
    return made


def pending_replays(conn: sa.Connection) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(_R)).scalar() or 0)


def _endpoint(r: Any) -> Endpoint:
    return Endpoint(
        id=int(r.id),
        url=r.url,
        enabled=bool(r.enabled),
        secret=r.secret,
        kinds=tuple(json.loads(r.kinds)) if r.kinds is not None else None,
        cursor=int(r.cursor),
        next_try=float(r.next_try),
        failures=int(r.failures),
        failing_since=r.failing_since,
        last_error=r.last_error,
        created=float(r.created),
    )
