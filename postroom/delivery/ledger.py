"""The delivery engine's reads and writes of the queue tables.

Three questions and one answer go through here:

- ``take_due``: which recipients are due now? They are switched to
  ``active`` in the same transaction, so that the next poll does not
  take them again, and returned grouped by message with where each
  message's record is.
- ``record``: the outcome of attempts. Each recipient's row gets its new
  state, next due time and last reply; an ``attempts`` row keeps the
  whole story; a message left with no pending recipient becomes
  ``removed`` (its segment is then collectable). In the same
  transaction each change's event is appended (``delivered``,
  ``deferred``, ``bounce``: postroom/events.py) and a hard bounce puts
  the address on the bounce list (postroom/suppressions.py), so no
  result is ever recorded without its event.
- ``wake``: a destination answered again, so its deferred recipients
  are due now (RFC 5321 §4.5.4.1 leaves retry order to us; Postfix does
  the same when a site comes back).
- ``reset_active``: at start, whatever a previous engine had taken is
  due again. That previous engine is gone, and an attempt it made may
  or may not have reached the remote server: this is the at-least-once
  window (docs/architecture.md, "Delivery").

Everything is synchronous SQLAlchemy Core on the event loop's thread,
as the spool's index writes are: the statements are small and batched,
and SQLite in WAL mode answers them in well under a millisecond.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from postroom import events, suppressions
from postroom.delivery import classify
from postroom.queue.envelope import Envelope, Recipient
from postroom.store import queue as tables


@dataclass(slots=True)
class DueRecipient:
    """A recipient taken for an attempt: its position in the envelope,
    the recipient (address, NOTIFY, ORCPT), how many attempts it has had
    and whether a delay notice went out."""

    idx: int
    recipient: Recipient
    domain: str
    attempts: int
    warned: bool
    bounce_now: bool = False


@dataclass(slots=True)
class DueMessage:
    """A message with some recipients due: where its record lives, its
    envelope (recipient states in it are stale) and the due ones."""

    queue_id: str
    spool: str
    segment: int
    offset: int
    length: int
    received_at: float
    envelope: Envelope
    recipients: list[DueRecipient] = field(default_factory=list)
    # Filled by the engine on first use and shared by the message's jobs
    # at every destination: the content, and the content as signed.
    content: bytes | None = None
    signed: bytes | None = None
    # The engine's bookkeeping of this pass: recipients not yet settled,
    # and those waiting for the pass's notices (with their changes).
    unsettled: int = 0
    deferred: int = 0
    failed: list[Any] = field(default_factory=list)
    delayed: list[Any] = field(default_factory=list)
    held: list[Change] = field(default_factory=list)
    succeeded: list[Any] = field(default_factory=list)


@dataclass(slots=True)
class Change:
    """The new state of one recipient after an attempt, and the attempt
    row to add (``attempt`` None for a change without an attempt, such as
    an administrator's bounce)."""

    queue_id: str
    idx: int
    state: str
    next_attempt: float
    attempts: int
    warned: bool
    last_reply: str
    attempt: dict[str, Any] | None = None
    # For the event the change reports (postroom/events.py): the
    # recipient's address and its message's ``events.Meta``; a change
    # without them (tests of the ledger alone) records no event.
    address: str = ""
    meta: events.Meta | None = None


_R = tables.recipients
_M = tables.messages
_A = tables.attempts


def take_due(conn: sa.Connection, now: float, limit: int) -> list[DueMessage]:
    """Up to *limit* due recipients of queued messages, now ``active``."""
    rows = conn.execute(
        sa.select(
            _R.c.queue_id,
            _R.c.idx,
            _R.c.address,
            _R.c.notify,
            _R.c.orcpt,
            _R.c.domain,
            _R.c.attempts,
            _R.c.warned,
            _R.c.bounce_now,
        )
        .join(_M, _M.c.queue_id == _R.c.queue_id)
        .where(
            _R.c.state.in_((tables.QUEUED, tables.DEFERRED)),
            _R.c.next_attempt <= now,
            _M.c.state == tables.QUEUED,
        )
        .order_by(_R.c.next_attempt)
        .limit(limit)
    ).all()
    if not rows:
        return []
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    cursor = dbapi.cursor()
    try:
        cursor.executemany(
            _sql(_TAKE, conn.dialect.paramstyle == "qmark"),
            [(r.queue_id, r.idx) for r in rows],
        )
    finally:
        cursor.close()
    ids = list(dict.fromkeys(r.queue_id for r in rows))
    messages: dict[str, DueMessage] = {}
    for i in range(0, len(ids), 500):
        for m in conn.execute(
            sa.select(
                _M.c.queue_id,
                _M.c.spool,
                _M.c.segment,
                _M.c.offset,
                _M.c.length,
                _M.c.received_at,
                _M.c.envelope,
            ).where(_M.c.queue_id.in_(ids[i : i + 500]))
        ):
            messages[m.queue_id] = DueMessage(
                queue_id=m.queue_id,
                spool=m.spool,
                segment=m.segment,
                offset=m.offset,
                length=m.length,
                received_at=m.received_at,
                envelope=Envelope.from_json(m.envelope),
            )
    for r in rows:
        message = messages[r.queue_id]
        message.unsettled += 1
        message.recipients.append(
            DueRecipient(
                idx=r.idx,
                recipient=Recipient(
                    address=r.address,
                    notify=tables.notify_from_column(r.notify),
                    orcpt=r.orcpt,
                    state=tables.ACTIVE,
                ),
                domain=r.domain,
                attempts=r.attempts,
                warned=bool(r.warned),
                bounce_now=bool(r.bounce_now),
            )
        )
    return [messages[q] for q in ids]


def record(
    conn: sa.Connection, changes: Sequence[Change], complete: Iterable[str] = ()
) -> list[str]:
    """Apply *changes*; return the queue ids that are now ``removed``.

    *complete* names messages the caller knows have no pending recipient
    left (every recipient was in the pass and is final): they are
    removed without asking. Other messages with a final change are
    checked against the table.

    This runs for every batch of results, so it hands tuples straight
    to the driver's ``executemany`` (as ``store.queue.insert_rows`` does):
    SQLAlchemy's statement machinery cost more than the statements.
    """
    if not changes:
        return []
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    qmark = conn.dialect.paramstyle == "qmark"
    cursor = dbapi.cursor()
    try:
        cursor.executemany(
            _sql(_UPDATE_RECIPIENT, qmark),
            [
                (
                    c.state,
                    c.next_attempt,
                    c.attempts,
                    c.warned,
                    c.last_reply,
                    c.queue_id,
                    c.idx,
                )
                for c in changes
            ],
        )
        attempt_rows = [
            (c.queue_id, c.idx, *(c.attempt[k] for k in _ATTEMPT_KEYS))
            for c in changes
            if c.attempt is not None
        ]
        if attempt_rows:
            cursor.executemany(_sql(_INSERT_ATTEMPT, qmark), attempt_rows)
        # The events and hard-bounce suppressions the changes make, in
        # the same transaction: a result is never recorded without its
        # event, nor an event without its result.
        event_rows, bounced = _events_of(changes)
        events.insert_rows(cursor, event_rows, qmark=qmark)
        if bounced:
            cursor.executemany(suppressions.add_rows_sql(qmark), bounced)
        done = set(complete)
        candidates = {
            c.queue_id
            for c in changes
            if c.state in tables.FINAL and c.queue_id not in done
        }
        if candidates:
            done |= candidates - _with_pending(cursor, candidates, qmark)
        removed = sorted(done)
        cursor.executemany(
            _sql(_REMOVE_MESSAGE, qmark), [(queue_id,) for queue_id in removed]
        )
    finally:
        cursor.close()
    return removed


# Failure classes that say the address itself cannot receive mail.
_HARD = (classify.BAD_MAILBOX, classify.BAD_DOMAIN)


def _events_of(
    changes: Sequence[Change],
) -> tuple[list[events.Row], list[tuple[object, ...]]]:
    """The event row of each change that reports an attempt, and a
    bounce-list row for each hard bounce (see postroom/suppressions.py
    for which bounces those are)."""
    rows: list[events.Row] = []
    bounced: list[tuple[object, ...]] = []
    for c in changes:
        attempt = c.attempt
        if attempt is None or c.meta is None:
            continue
        when = attempt["started_at"] + attempt["duration"]
        if c.state == tables.DELIVERED:
            rows.append(
                events.row(
                    events.Kind.DELIVERED, when, c.meta, c.queue_id, c.idx,
                    c.address, response=c.last_reply,
                )
            )
        elif c.state == tables.BOUNCED:
            code = attempt["code"]
            status = attempt["enhanced"] or f"{code // 100}.0.0"
            hard = code >= 500 and attempt["failure"] in _HARD
            rows.append(
                events.row(
                    events.Kind.BOUNCE, when, c.meta, c.queue_id, c.idx,
                    c.address, reason=c.last_reply, status=status,
                    extra={
                        # SendGrid's split: "bounce" for the address,
                        # "blocked" for everything else.
                        "type": "bounce" if hard else "blocked",
                        "bounce_classification": attempt["failure"],
                    },
                )
            )
            if hard:
                bounced.append(
                    (
                        suppressions.normalize(c.address),
                        suppressions.BOUNCE,
                        0,
                        when,
                        c.last_reply,
                        status,
                    )
                )
        else:
            rows.append(
                events.row(
                    events.Kind.DEFERRED, when, c.meta, c.queue_id, c.idx,
                    c.address, response=c.last_reply, attempt=c.attempts,
                )
            )
    return rows, bounced


_TAKE = "UPDATE recipients SET state = 'active' WHERE queue_id = ? AND idx = ?"
# A recipient an administrator asked to bounce while its attempt was in
# flight stays due at once (``queue bounce`` sets ``bounce_now``).
_UPDATE_RECIPIENT = (
    "UPDATE recipients SET state = ?, "
    "next_attempt = CASE WHEN bounce_now THEN 0 ELSE ? END, attempts = ?, "
    "warned = ?, last_reply = ? WHERE queue_id = ? AND idx = ?"
)
_ATTEMPT_KEYS = (
    "attempt",
    "started_at",
    "duration",
    "status",
    "failure",
    "remote_host",
    "remote_ip",
    "remote_port",
    "code",
    "enhanced",
    "reply",
    "tls",
)
_INSERT_ATTEMPT = (
    f"INSERT INTO attempts (queue_id, idx, {', '.join(_ATTEMPT_KEYS)}) "
    f"VALUES ({', '.join(['?'] * (len(_ATTEMPT_KEYS) + 2))})"
)
_REMOVE_MESSAGE = (
    "UPDATE messages SET state = 'removed' WHERE queue_id = ? AND state <> 'removed'"
)
_PENDING_STATES = ", ".join(f"'{s}'" for s in tables.PENDING)


def _sql(text: str, qmark: bool) -> str:
    return text if qmark else text.replace("?", "%s")


def _with_pending(cursor: Any, queue_ids: set[str], qmark: bool) -> set[str]:
    """Those of *queue_ids* that still have a pending recipient."""
    ids = sorted(queue_ids)
    pending: set[str] = set()
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        marks = ", ".join(["?"] * len(chunk))
        cursor.execute(
            _sql(
                f"SELECT DISTINCT queue_id FROM recipients WHERE queue_id IN "
                f"({marks}) AND state IN ({_PENDING_STATES})",
                qmark,
            ),
            chunk,
        )
        pending.update(row[0] for row in cursor.fetchall())
    return pending


def wake(conn: sa.Connection, domains: Iterable[str], now: float) -> int:
    """Make the deferred recipients of *domains* due at *now*."""
    domains = list(domains)
    if not domains:
        return 0
    result = conn.execute(
        _R.update()
        .where(
            _R.c.state == tables.DEFERRED,
            _R.c.domain.in_(domains),
            _R.c.next_attempt > now,
        )
        .values(next_attempt=now)
    )
    return result.rowcount or 0


def reset_active(conn: sa.Connection) -> int:
    """Return every ``active`` recipient to the queue, due as it was."""
    result = conn.execute(
        _R.update()
        .where(_R.c.state == tables.ACTIVE)
        .values(
            state=sa.case((_R.c.attempts > 0, tables.DEFERRED), else_=tables.QUEUED)
        )
    )
    return result.rowcount or 0
