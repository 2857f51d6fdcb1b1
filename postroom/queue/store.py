"""Read and manage the queue from outside the spool.

``QueueStore`` is what the CLI, the HTTP API and the dashboard use to
list, inspect, hold, release, flush, bounce and delete queued messages.
It does not take the spool lock, so it is safe to use while a server
owns the spool: SQLite runs in WAL mode (readers never block the
writer) with a busy timeout, records are read with pread and checked
against their crc, and deleting only marks rows ``removed``. The owning
server's garbage collector unlinks a segment once all its messages are
removed (at its next rotation, ``Spool.collect_garbage()`` or start);
until then the bytes stay on disk. Changes meant for the delivery
engine (flush, release, bounce) are rows it reads at its next poll.

It sees every spool on the database at once: a server runs one spool
per worker process, and the queue is their union. Each row names its
spool, and records are read from ``<spool_dir>/<spool>/journal/``. A
spool whose worker is gone is collected by ``spool.recover_all()`` when
the server next starts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from postroom import logs
from postroom.errors import NotFound
from postroom.queue import spool
from postroom.queue.envelope import Envelope, Recipient
from postroom.queue.journal import read_record
from postroom.store import queue as tables

log = logging.getLogger(__name__)


@dataclass
class RecipientInfo(Recipient):
    """A recipient with its delivery state from the recipients table."""

    next_attempt: float = 0.0
    attempts: int = 0
    last_reply: str | None = None

    def plain(self) -> Recipient:
        """The envelope's view: address, DSN request and state."""
        return Recipient(self.address, self.notify, self.orcpt, self.state)


@dataclass
class Attempt:
    """One delivery attempt of one recipient (the ``attempts`` table)."""

    idx: int
    attempt: int
    started_at: float
    duration: float
    status: str
    failure: str
    remote_host: str | None
    remote_ip: str | None
    remote_port: int | None
    code: int
    enhanced: str
    reply: str
    tls: str


@dataclass
class Filter:
    """Which messages an administrative command applies to: all that
    match every given criterion. ``sender`` and ``recipient`` compare
    whole addresses, case-insensitively; ``domain`` is a recipient
    domain; ``state`` a message state (queued, held) or ``deferred``
    (messages with a deferred recipient)."""

    sender: str | None = None
    recipient: str | None = None
    domain: str | None = None
    state: str | None = None

    def empty(self) -> bool:
        return not (self.sender or self.recipient or self.domain or self.state)


# The age buckets of ``summary``, in minutes, as qshape draws them.
AGE_BUCKETS = (5, 10, 20, 40, 80, 160, 320, 640, 1280)


@dataclass
class MessageInfo:
    """A queue row: where the message is, its state and its recipients.

    ``recipients`` carry the per-recipient state from the recipients
    table, which is authoritative (the stored envelope's is stale).
    """

    queue_id: str
    sender: str
    received_at: float
    size: int
    state: str
    spool: str  # the spool's name: its directory under the spool_dir
    segment: int
    offset: int
    length: int
    recipients: list[RecipientInfo] = field(default_factory=list)


class QueueStore:
    """Queries and administrative changes on the queue tables, across
    every spool. *spool_dir* is the directory the spools live under, as
    given to ``Spool``."""

    def __init__(self, engine: sa.Engine, spool_dir: Path) -> None:
        self._engine = engine
        self._spool_dir = Path(spool_dir)

    def list_messages(self) -> list[MessageInfo]:
        """Every message not removed, in arrival order."""
        messages, recipients = tables.messages, tables.recipients
        live = messages.c.state != tables.REMOVED
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(*_INFO_COLUMNS)
                .where(live)
                .order_by(messages.c.received_at, messages.c.queue_id)
            ).all()
            rcpts = conn.execute(
                sa.select(recipients)
                .where(
                    recipients.c.queue_id.in_(
                        sa.select(messages.c.queue_id).where(live)
                    )
                )
                .order_by(recipients.c.queue_id, recipients.c.idx)
            ).all()

        infos = {row.queue_id: _info(row) for row in rows}
        for rcpt in rcpts:
            # A message queued between the two queries has no info yet.
            info = infos.get(rcpt.queue_id)
            if info is not None:
                info.recipients.append(_recipient(rcpt))
        return list(infos.values())

    def get(
        self, queue_id: str, *, include_removed: bool = False
    ) -> tuple[Envelope, MessageInfo]:
        """The envelope and row of *queue_id*; NotFound if not queued.

        With *include_removed*, a message that left the queue (delivered,
        bounced, deleted) is found too, until the garbage collector
        reclaims its segment and its rows with it.
        """
        messages, recipients = tables.messages, tables.recipients
        where = [messages.c.queue_id == queue_id]
        if not include_removed:
            where.append(messages.c.state != tables.REMOVED)
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(*_INFO_COLUMNS, messages.c.envelope).where(*where)
            ).first()
            if row is None:
                raise NotFound(f"no message with queue id {queue_id}")
            rcpts = conn.execute(
                sa.select(recipients)
                .where(recipients.c.queue_id == queue_id)
                .order_by(recipients.c.idx)
            ).all()

        info = _info(row)
        info.recipients = [_recipient(r) for r in rcpts]
        envelope = Envelope.from_json(row.envelope)
        # The envelope gets plain recipients with their current state;
        # the info keeps the delivery details.
        envelope.recipients = [r.plain() for r in info.recipients]
        return envelope, info

    def read_content(self, queue_id: str) -> bytes:
        """The message content, checksum verified.

        Raises NotFound, SpoolError (segment unreadable) or SpoolCorrupt.
        """
        return spool.read_message(self._engine, self._spool_dir, queue_id)[1]

    def read_record_of(self, info: MessageInfo) -> bytes:
        """The content at the place *info* names, removed or not; raises
        SpoolError once its segment has been collected."""
        return read_record(
            self._spool_dir, info.spool, info.segment, info.offset, info.length
        )[1]

    def attempts(self, queue_id: str) -> list[Attempt]:
        """Every delivery attempt of *queue_id*, oldest first."""
        a = tables.attempts
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(a)
                .where(a.c.queue_id == queue_id)
                .order_by(a.c.started_at, a.c.idx, a.c.id)
            ).all()
        return [
            Attempt(
                idx=r.idx,
                attempt=r.attempt,
                started_at=r.started_at,
                duration=r.duration,
                status=r.status,
                failure=r.failure,
                remote_host=r.remote_host,
                remote_ip=r.remote_ip,
                remote_port=r.remote_port,
                code=r.code,
                enhanced=r.enhanced,
                reply=r.reply,
                tls=r.tls,
            )
            for r in rows
        ]

    def select(self, which: Filter) -> list[str]:
        """Queue ids of the live messages *which* matches, oldest first."""
        m, r = tables.messages, tables.recipients
        query = sa.select(m.c.queue_id).where(m.c.state != tables.REMOVED)
        if which.sender is not None:
            query = query.where(sa.func.lower(m.c.sender) == which.sender.lower())
        rcpt_conditions = []
        if which.recipient is not None:
            rcpt_conditions.append(
                sa.func.lower(r.c.address) == which.recipient.lower()
            )
        if which.domain is not None:
            rcpt_conditions.append(r.c.domain == which.domain.lower().rstrip("."))
        if which.state == tables.DEFERRED:
            rcpt_conditions.append(r.c.state == tables.DEFERRED)
        elif which.state is not None:
            query = query.where(m.c.state == which.state)
        if rcpt_conditions:
            query = query.where(
                sa.select(r.c.queue_id)
                .where(r.c.queue_id == m.c.queue_id, *rcpt_conditions)
                .exists()
            )
        with self._engine.connect() as conn:
            return list(
                conn.execute(query.order_by(m.c.received_at, m.c.queue_id)).scalars()
            )

    def hold(self, queue_ids: Iterable[str]) -> int:
        """Keep *queue_ids* out of delivery until released. Recipients
        in an attempt already finish it (like Postfix's active queue)."""
        return self._set_state(queue_ids, tables.QUEUED, tables.HELD, "held")

    def release(self, queue_ids: Iterable[str]) -> int:
        """Return held *queue_ids* to the queue, due at once."""
        wanted = list(dict.fromkeys(queue_ids))
        count = self._set_state(wanted, tables.HELD, tables.QUEUED, "released")
        self._make_due(wanted, None)
        return count

    def flush(
        self, queue_ids: Iterable[str] | None = None, domain: str | None = None
    ) -> int:
        """Make waiting recipients due now (all, those of *queue_ids*, or
        those at *domain*); return how many. The delivery engine notices
        at its next poll."""
        ids = None if queue_ids is None else list(dict.fromkeys(queue_ids))
        if ids is not None:
            self._check_live(ids)
        count = self._make_due(ids, domain)
        log.info(logs.event("flushed", None, recipients=count, domain=domain))
        return count

    def bounce(self, queue_ids: Iterable[str]) -> int:
        """Return *queue_ids* to their senders: every pending recipient
        is bounced, with a notice, by the delivery engine when it next
        polls (within a second when it runs). Held messages are released
        for that. Returns the number of recipients."""
        wanted = list(dict.fromkeys(queue_ids))
        m, r = tables.messages, tables.recipients
        with self._engine.begin() as conn:
            self._check_live(wanted, conn)
            count = 0
            for i in range(0, len(wanted), 500):
                chunk = wanted[i : i + 500]
                conn.execute(
                    m.update()
                    .where(m.c.queue_id.in_(chunk), m.c.state == tables.HELD)
                    .values(state=tables.QUEUED)
                )
                count += (
                    conn.execute(
                        r.update()
                        .where(
                            r.c.queue_id.in_(chunk),
                            r.c.state.in_(tables.PENDING),
                        )
                        .values(bounce_now=True, next_attempt=0.0)
                    ).rowcount
                    or 0
                )
        for queue_id in wanted:
            log.info(logs.event("bounced", queue_id, reason="admin"))
        return count

    def summary(self, now: float) -> dict[str, list[int]]:
        """Pending recipients per domain and age (qshape): for each
        domain, the total then one count per bucket of ``AGE_BUCKETS``
        (the last one open-ended). The key "TOTAL" sums every domain."""
        m, r = tables.messages, tables.recipients
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(r.c.domain, m.c.received_at)
                .join(m, m.c.queue_id == r.c.queue_id)
                .where(m.c.state != tables.REMOVED, r.c.state.in_(tables.PENDING))
            ).all()
        width = len(AGE_BUCKETS) + 1
        table: dict[str, list[int]] = {"TOTAL": [0] * (width + 1)}
        for domain, received_at in rows:
            minutes = max(0.0, now - received_at) / 60
            bucket = next(
                (i for i, edge in enumerate(AGE_BUCKETS) if minutes < edge),
                len(AGE_BUCKETS),
            )
            for key in ("TOTAL", domain or "?"):
                counts = table.setdefault(key, [0] * (width + 1))
                counts[0] += 1
                counts[bucket + 1] += 1
        return table

    def _make_due(self, queue_ids: list[str] | None, domain: str | None) -> int:
        r = tables.recipients
        now = time.time()
        m = tables.messages
        conditions = [
            r.c.state.in_((tables.QUEUED, tables.DEFERRED)),
            r.c.next_attempt > now,
            # Held messages stay held; ``release`` makes them due.
            r.c.queue_id.in_(
                sa.select(m.c.queue_id).where(m.c.state == tables.QUEUED)
            ),
        ]
        if domain is not None:
            conditions.append(r.c.domain == domain.lower().rstrip("."))
        with self._engine.begin() as conn:
            if queue_ids is None:
                return (
                    conn.execute(
                        r.update().where(*conditions).values(next_attempt=now)
                    ).rowcount
                    or 0
                )
            count = 0
            for i in range(0, len(queue_ids), 500):
                count += (
                    conn.execute(
                        r.update()
                        .where(r.c.queue_id.in_(queue_ids[i : i + 500]), *conditions)
                        .values(next_attempt=now)
                    ).rowcount
                    or 0
                )
            return count

    def _check_live(
        self, queue_ids: list[str], conn: sa.Connection | None = None
    ) -> None:
        """NotFound naming the first of *queue_ids* not in the queue."""
        m = tables.messages
        if conn is None:
            with self._engine.connect() as own:
                return self._check_live(queue_ids, own)
        found: set[str] = set()
        for i in range(0, len(queue_ids), 500):
            found.update(
                conn.execute(
                    sa.select(m.c.queue_id).where(
                        m.c.queue_id.in_(queue_ids[i : i + 500]),
                        m.c.state != tables.REMOVED,
                    )
                ).scalars()
            )
        for queue_id in queue_ids:
            if queue_id not in found:
                raise NotFound(f"no message with queue id {queue_id}")

    def _set_state(
        self, queue_ids: Iterable[str], old: str, new: str, event: str
    ) -> int:
        """Move *queue_ids* from *old* to *new* (all must be live; those
        not in *old* are left as they are); return how many moved."""
        wanted = list(dict.fromkeys(queue_ids))
        m = tables.messages
        moved: list[str] = []
        with self._engine.begin() as conn:
            self._check_live(wanted, conn)
            for i in range(0, len(wanted), 500):
                moved += conn.execute(
                    m.update()
                    .where(m.c.queue_id.in_(wanted[i : i + 500]), m.c.state == old)
                    .values(state=new)
                    .returning(m.c.queue_id)
                ).scalars()
        for queue_id in moved:
            log.info(logs.event(event, queue_id, reason="admin"))
        return len(moved)

    def delete(self, queue_ids: Iterable[str]) -> int:
        """Mark *queue_ids* removed; return how many were.

        All or nothing: if any id is unknown (or already removed),
        NotFound names it and nothing changes.

        XXX: like every SQLite commit here (``synchronous=NORMAL``), a
        removal can be undone by a power loss in the next second or so,
        and the message is then delivered after all; fsyncing each
        administrative delete was not worth slowing the queue for.
        """
        wanted = list(dict.fromkeys(queue_ids))
        messages = tables.messages
        live = messages.c.state != tables.REMOVED
        with self._engine.begin() as conn:
            found: set[str] = set()
            for i in range(0, len(wanted), 500):
                found.update(
                    conn.execute(
                        sa.select(messages.c.queue_id).where(
                            messages.c.queue_id.in_(wanted[i : i + 500]), live
                        )
                    ).scalars()
                )
            for queue_id in wanted:
                if queue_id not in found:
                    raise NotFound(f"no message with queue id {queue_id}")
            for i in range(0, len(wanted), 500):
                conn.execute(
                    messages.update()
                    .where(messages.c.queue_id.in_(wanted[i : i + 500]))
                    .values(state=tables.REMOVED)
                )
        for queue_id in wanted:
            log.info(logs.event("removed", queue_id, reason="admin"))
        return len(wanted)

    def delete_all(self) -> int:
        """Mark every message not yet removed as removed; return how many."""
        messages = tables.messages
        with self._engine.begin() as conn:
            removed = (
                conn.execute(
                    messages.update()
                    .where(messages.c.state != tables.REMOVED)
                    .values(state=tables.REMOVED)
                    .returning(messages.c.queue_id)
                )
                .scalars()
                .all()
            )
        for queue_id in removed:
            log.info(logs.event("removed", queue_id, reason="admin"))
        return len(removed)


_M = tables.messages
_INFO_COLUMNS = (
    _M.c.queue_id,
    _M.c.sender,
    _M.c.received_at,
    _M.c.size,
    _M.c.state,
    _M.c.spool,
    _M.c.segment,
    _M.c.offset,
    _M.c.length,
)


# Rows are typed Any: SQLAlchemy types named columns only dynamically.
def _info(row: Any) -> MessageInfo:
    return MessageInfo(
        queue_id=row.queue_id,
        sender=row.sender,
        received_at=row.received_at,
        size=row.size,
        state=row.state,
        spool=row.spool,
        segment=row.segment,
        offset=row.offset,
        length=row.length,
    )


def _recipient(row: Any) -> RecipientInfo:
    return RecipientInfo(
        address=row.address,
        notify=tables.notify_from_column(row.notify),
        orcpt=row.orcpt,
        state=row.state,
        next_attempt=row.next_attempt,
        attempts=row.attempts,
        last_reply=row.last_reply,
    )
