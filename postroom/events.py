"""The event store: what happened to each message for each recipient.

Theory of operation
-------------------
Events are a closed vocabulary (``Kind``, SendGrid's event names) kept
in one append-only table (``store/events.py``). They are written by
whoever changes the state they report, *in that change's transaction*,
so an event can be neither lost nor invented by a crash between the
two:

- ``processed``: the spool's index transaction, after the journal
  fsync, once per recipient (``queue/pipeline.py``), for SMTP and API
  mail alike;
- ``delivered``, ``deferred``, ``bounce``: the delivery engine's batch
  write of recipient states (``delivery/ledger.py`` ``record``);
- ``dropped``: the API's Mail Send, for recipients on a suppression
  list (``api/v3/mail_send.py``);
- ``open``, ``click``, ``unsubscribe``, ``spamreport``, ``rsvp``:
  tracking, unsubscribe pages and inbound reports (to come).

Writers hand plain tuples (``Row``) to the DBAPI cursor's
``executemany``, as the queue tables' hot paths do: a row costs a few
microseconds, and nothing else is done per event at write time. The
JSON of a message's categories and custom_args is made once per message
(``Meta``), not per recipient.

Readers are the query API (``api/v3/events.py``) and the webhook sender
(``webhooks/sender.py``), which turn rows into SendGrid's event objects
with ``to_sendgrid``.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from postroom.queue.envelope import Envelope
from postroom.store import events as table


class Kind(enum.StrEnum):
    """Every kind of event; the values are SendGrid's event names."""

    PROCESSED = "processed"
    DROPPED = "dropped"
    DEFERRED = "deferred"
    DELIVERED = "delivered"
    BOUNCE = "bounce"
    OPEN = "open"
    CLICK = "click"
    UNSUBSCRIBE = "unsubscribe"
    SPAMREPORT = "spamreport"
    RSVP = "rsvp"


KINDS = tuple(k.value for k in Kind)

# A row as store/events.py COLUMNS orders it.
Row = tuple[
    str,
    float,
    str | None,
    int | None,
    str,
    str,
    str | None,
    str | None,
    str | None,
    int | None,
    str | None,
    str | None,
    str | None,
    str | None,
]


@dataclass(frozen=True, slots=True)
class Meta:
    """What every event of one message repeats, encoded once: the
    X-Message-Id its sender was told, categories and custom_args as
    JSON text, the campaign."""

    request: str
    categories: str | None = None
    custom_args: str | None = None
    campaign_id: str | None = None


_SMTP_META: dict[str, Meta] = {}


def meta_of(envelope: Envelope) -> Meta:
    """The ``Meta`` of *envelope*. The X-Message-Id is the API's for
    API mail, the queue id (the 250 reply's) for SMTP mail."""
    api = envelope.api
    if not api:
        return Meta(envelope.queue_id)
    categories = api.get("categories")
    custom_args = api.get("custom_args")
    campaign = api.get("campaign_id")
    return Meta(
        str(api.get("request") or envelope.queue_id),
        _dump(categories) if categories else None,
        _dump(custom_args) if custom_args else None,
        str(campaign) if campaign is not None else None,
    )


def message_id(meta: Meta, queue_id: str, idx: int | None) -> str:
    """SendGrid's ``sg_message_id``: it starts with the X-Message-Id, so
    a sender can match events to its request as SendGrid's users do."""
    if idx is None:
        return f"{meta.request}.{queue_id}"
    return f"{meta.request}.{queue_id}.{idx}"


def row(
    kind: Kind,
    when: float,
    meta: Meta,
    queue_id: str | None,
    idx: int | None,
    recipient: str,
    *,
    reason: str | None = None,
    response: str | None = None,
    status: str | None = None,
    attempt: int | None = None,
    extra: dict[str, Any] | None = None,
) -> Row:
    """One event row (see ``store/events.py`` for the columns)."""
    return (
        kind.value,
        when,
        queue_id,
        idx,
        recipient.lower(),
        message_id(meta, queue_id or meta.request, idx),
        reason,
        response,
        status,
        attempt,
        meta.categories,
        meta.custom_args,
        meta.campaign_id,
        _dump(extra) if extra else None,
    )


def processed_rows(envelope: Envelope) -> list[Row]:
    """The ``processed`` events of a message just accepted. Notices the
    delivery engine writes (null sender, listener "delivery") are ours,
    not a customer's mail, and have none."""
    if envelope.listener == "delivery":
        return []
    meta = meta_of(envelope)
    when = envelope.received_at
    queue_id = envelope.queue_id
    return [
        row(Kind.PROCESSED, when, meta, queue_id, idx, r.address)
        for idx, r in enumerate(envelope.recipients)
    ]


def insert_rows(cursor: Any, rows: Sequence[Row], *, qmark: bool = True) -> None:
    """Append *rows* with a DBAPI *cursor*, inside the caller's
    transaction (the point: the event commits with the change it
    reports)."""
    if rows:
        sql = table.INSERT if qmark else table.INSERT.replace("?", "%s")
        cursor.executemany(sql, rows)


def record(conn: sa.Connection, rows: Sequence[Row]) -> None:
    """``insert_rows`` for a caller holding an SQLAlchemy connection."""
    if not rows:
        return
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    cursor = dbapi.cursor()
    try:
        insert_rows(cursor, rows, qmark=conn.dialect.paramstyle == "qmark")
    finally:
        cursor.close()


def query(
    conn: sa.Connection,
    *,
    kinds: Sequence[str] = (),
    start: float | None = None,
    end: float | None = None,
    email: str | None = None,
    after: int = 0,
    limit: int = 100,
) -> list[sa.Row[Any]]:
    """Events in ``id`` order (which is time order, give or take the
    clock), those with an id above *after*, filtered by kind, by time
    (*start* inclusive, *end* exclusive) and by recipient."""
    e = table.events
    stmt = sa.select(e).where(e.c.id > after).order_by(e.c.id).limit(limit)
    if kinds:
        stmt = stmt.where(e.c.kind.in_(list(kinds)))
    if start is not None:
        stmt = stmt.where(e.c.time >= start)
    if end is not None:
        stmt = stmt.where(e.c.time < end)
    if email:
        stmt = stmt.where(e.c.recipient == email.strip().lower())
    return list(conn.execute(stmt))


def last_id(conn: sa.Connection) -> int:
    """The id of the newest event, 0 when there is none."""
    found = conn.execute(sa.select(sa.func.max(table.events.c.id))).scalar()
    return int(found or 0)


# Fields of SendGrid's event object that custom_args may not replace.
_RESERVED = frozenset(
    {
        "email",
        "timestamp",
        "event",
        "sg_event_id",
        "sg_message_id",
        "category",
        "reason",
        "status",
        "response",
        "attempt",
        "type",
    }
)


def to_sendgrid(event: Any) -> dict[str, Any]:
    """A stored event (a row of ``events``) as SendGrid's Event Webhook
    posts it: its fields, then custom_args at the top level (SendGrid's
    "unique args"), never over a field of the event itself."""
    out: dict[str, Any] = {
        "email": event.recipient,
        "timestamp": int(event.time),
        "event": event.kind,
        # Stable across replays, so a receiver can drop duplicates.
        "sg_event_id": f"pr{event.id}",
        "sg_message_id": event.message_id,
    }
    if event.categories:
        out["category"] = json.loads(event.categories)
    for name in ("reason", "status", "response"):
        value = getattr(event, name)
        if value is not None:
            out[name] = value
    if event.attempt is not None:
        # SendGrid sends the attempt number as a string.
        out["attempt"] = str(event.attempt)
    if event.campaign_id is not None:
        out["campaign_id"] = event.campaign_id
    if event.extra:
        out.update(json.loads(event.extra))
    if event.custom_args:
        args = json.loads(event.custom_args)
        if isinstance(args, dict):
            for key, value in args.items():
                if key not in _RESERVED:
                    out.setdefault(key, value)
    return out


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _dump(value: Any) -> str:
    return _ENCODER.encode(value)
