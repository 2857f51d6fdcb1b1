"""Read and manage the queue from outside the spool.

``QueueStore`` is what the CLI, the HTTP API and the dashboard use to
list, inspect and delete queued messages. It does not take the spool
lock, so it is safe to use while a server owns the spool: SQLite runs in
WAL mode (readers never block the writer) with a busy timeout, records
are read with pread and checked against their crc, and deleting only
marks rows ``removed``. The owning server's garbage collector unlinks
a segment once all its messages are removed (at its next rotation,
``Spool.collect_garbage()`` or start); until then the bytes stay on disk.

It sees every spool on the database at once: a server runs one spool
per worker process, and the queue is their union. Each row names its
spool, and records are read from ``<spool_dir>/<spool>/journal/``. A
spool whose worker is gone is collected by ``spool.recover_all()`` when
the server next starts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from postroom import logs
from postroom.errors import NotFound
from postroom.queue import spool
from postroom.queue.envelope import Envelope, Recipient
from postroom.store import queue as tables

log = logging.getLogger(__name__)


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
    recipients: list[Recipient] = field(default_factory=list)


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

    def get(self, queue_id: str) -> tuple[Envelope, MessageInfo]:
        """The envelope and row of *queue_id*; NotFound if not queued."""
        messages, recipients = tables.messages, tables.recipients
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(*_INFO_COLUMNS, messages.c.envelope).where(
                    messages.c.queue_id == queue_id, messages.c.state != tables.REMOVED
                )
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
        envelope.recipients = list(info.recipients)
        return envelope, info

    def read_content(self, queue_id: str) -> bytes:
        """The message content, checksum verified.

        Raises NotFound, SpoolError (segment unreadable) or SpoolCorrupt.
        """
        return spool.read_message(self._engine, self._spool_dir, queue_id)[1]

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


def _recipient(row: Any) -> Recipient:
    return Recipient(
        address=row.address,
        notify=tables.notify_from_column(row.notify),
        orcpt=row.orcpt,
        state=row.state,
    )
