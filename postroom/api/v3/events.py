"""``GET /v3/events``: the event store, filtered. Needs ``events.read``.

Query parameters (all optional)::

    kind   an event kind (processed, delivered, bounce, ...); repeat
           it for several
    from   epoch seconds, inclusive
    to     epoch seconds, exclusive
    email  one recipient address
    after  an event id: only later ones (paging)
    limit  1..1000, default 100

The answer, oldest first::

    {"events": [{"id": 7, "email": ..., "timestamp": ..., "event": ...,
                 "sg_event_id": ..., "sg_message_id": ..., ...}],
     "next": 7}

Each event is what the Event Webhook posts (``events.to_sendgrid``),
with our ``id``; ``next`` is the ``after`` to pass for the following
page, or null once a page came back short.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from postroom import events
from postroom.api.auth import EventsKey
from postroom.api.errors import SQL_INT_MAX, ApiError

router = APIRouter()


@router.get("/v3/events", summary="Query the event store")
async def list_events(
    request: Request,
    _key: EventsKey,
    kind: Annotated[list[str] | None, Query()] = None,
    start: Annotated[float | None, Query(alias="from")] = None,
    end: Annotated[float | None, Query(alias="to")] = None,
    email: str | None = None,
    after: Annotated[int, Query(ge=0, le=SQL_INT_MAX)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    kinds = kind or []
    for k in kinds:
        if k not in events.KINDS:
            raise ApiError(400, [(f"unknown event kind {k!r}", "kind")])
    engine = request.app.state.api.engine

    def read() -> list[Any]:
        with engine.connect() as conn:
            return events.query(
                conn, kinds=kinds, start=start, end=end, email=email,
                after=after, limit=limit,
            )

    rows = await asyncio.to_thread(read)
    return {
        "events": [{"id": r.id, **events.to_sendgrid(r)} for r in rows],
        "next": rows[-1].id if len(rows) == limit else None,
    }
