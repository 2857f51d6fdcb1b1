"""Queue tables: one row per accepted message, one per recipient.

The spool journal holds the bytes (envelope and content); these tables
are the index the rest of the product queries: where a message's record
lives (``spool``, ``segment``, ``offset``, ``length``), its state, and
the state of each recipient. The spool writes a message's rows in the same batch
transaction that follows the journal fsync, and its recovery scan
re-creates rows a power loss took away, so the journal stays the source
of truth (see ``queue/spool.py``).

Several spools share one database (one per server worker process; in
cluster mode, several nodes' worth), and each numbers its segments from
1, so a segment number means nothing without its spool's name: every
query a spool makes about its own rows filters on ``spool``, and the
index that serves recovery and garbage collection leads with it.

Message states:

- ``queued``: waiting for, or in, delivery.
- ``held``: kept out of delivery by an administrator.
- ``removed``: gone from the queue (delivered, bounced or deleted). The
  row stays until the spool's garbage collector unlinks the segment file
  that holds the record; only then is it deleted, so that a recovery
  scan never mistakes a removed message for one whose row was lost.

Tables added later (delivery attempts, leases) reference
``messages.queue_id`` with ``ondelete="CASCADE"``: the collector deletes
``messages`` rows and expects dependent rows to go with them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import sqlalchemy as sa

from postroom.queue.envelope import Envelope
from postroom.store.db import metadata

QUEUED = "queued"
HELD = "held"
REMOVED = "removed"
MESSAGE_STATES = (QUEUED, HELD, REMOVED)

messages = sa.Table(
    "messages",
    metadata,
    sa.Column("queue_id", sa.String(32), primary_key=True),
    sa.Column("sender", sa.Text, nullable=False),
    sa.Column("received_at", sa.Float, nullable=False),
    # Content bytes, as the SIZE of the message; not the record length.
    sa.Column("size", sa.Integer, nullable=False),
    # Where the journal record is: the spool's name (its directory
    # <spool_dir>/<spool>/), the segment number (journal/00000042.seg in
    # it), the byte offset of the record header, and the record's length.
    sa.Column("spool", sa.String(32), nullable=False),
    sa.Column("segment", sa.Integer, nullable=False),
    sa.Column("offset", sa.BigInteger, nullable=False),
    sa.Column("length", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False, default=QUEUED),
    # Envelope.to_json() as written to the journal; recipient states in
    # it are stale, the recipients table is authoritative.
    sa.Column("envelope", sa.Text, nullable=False),
    sa.CheckConstraint(
        "state IN ('queued', 'held', 'removed')", name="ck_messages_state"
    ),
    # Listing the queue in arrival order, skipping removed rows.
    sa.Index("ix_messages_state_received", "state", "received_at"),
    # Recovery (a spool's segments, rows per segment) and garbage
    # collection (live rows per segment), always within one spool.
    sa.Index("ix_messages_spool_segment_state", "spool", "segment", "state"),
)

recipients = sa.Table(
    "recipients",
    metadata,
    sa.Column(
        "queue_id",
        sa.String(32),
        sa.ForeignKey("messages.queue_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    # Position in the envelope: RCPT order, which DSNs and logs keep.
    sa.Column("idx", sa.Integer, primary_key=True),
    sa.Column("address", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False, default=QUEUED),
    # RFC 3461 NOTIFY as given: NULL (absent), "NEVER", or a comma list
    # of SUCCESS, FAILURE, DELAY.
    sa.Column("notify", sa.String(32), nullable=True),
    sa.Column("orcpt", sa.Text, nullable=True),
    # Finding a message by recipient (CLI, API search).
    sa.Index("ix_recipients_address", "address"),
)


def notify_to_column(notify: tuple[str, ...] | None) -> str | None:
    """Envelope form of NOTIFY to the column form (see ``recipients``)."""
    if notify is None:
        return None
    return ",".join(notify) if notify else "NEVER"


def notify_from_column(text: str | None) -> tuple[str, ...] | None:
    """Column form of NOTIFY back to the envelope form."""
    if text is None:
        return None
    if text == "NEVER":
        return ()
    return tuple(text.split(","))


def insert_messages(
    conn: sa.Connection,
    spool: str,
    segment: int,
    rows: Iterable[tuple[Envelope, bytes, int, int, int]],
) -> None:
    """Insert the rows of messages just written to *segment* of *spool*.

    Each of *rows* is (envelope, its JSON, content size, record offset,
    record length). Recipient states come from the envelope.

    This runs once per group commit on the spool's writer thread, while
    the event loop competes for the GIL, so it goes to the driver's
    ``executemany`` with plain tuples: SQLAlchemy's per-row statement
    machinery cost more than the rest of the batch together.
    """
    message_rows: list[tuple[object, ...]] = []
    recipient_rows: list[tuple[object, ...]] = []
    now = time.time()
    for envelope, env_json, size, offset, length in rows:
        message_rows.append(
            (
                envelope.queue_id,
                envelope.sender,
                envelope.received_at or now,
                size,
                spool,
                segment,
                offset,
                length,
                QUEUED,
                env_json.decode(),
            )
        )
        for idx, rcpt in enumerate(envelope.recipients):
            recipient_rows.append(
                (
                    envelope.queue_id,
                    idx,
                    rcpt.address,
                    rcpt.state,
                    notify_to_column(rcpt.notify),
                    rcpt.orcpt,
                )
            )
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    if message_rows:
        conn.exec_driver_sql(
            _insert_sql(messages, _MESSAGE_COLUMNS, mark), message_rows
        )
    if recipient_rows:
        conn.exec_driver_sql(
            _insert_sql(recipients, _RECIPIENT_COLUMNS, mark), recipient_rows
        )


# The order of the tuples insert_messages builds.
_MESSAGE_COLUMNS = (
    "queue_id",
    "sender",
    "received_at",
    "size",
    "spool",
    "segment",
    "offset",
    "length",
    "state",
    "envelope",
)
_RECIPIENT_COLUMNS = ("queue_id", "idx", "address", "state", "notify", "orcpt")


def _insert_sql(table: sa.Table, columns: tuple[str, ...], mark: str) -> str:
    quoted = ", ".join(f'"{c}"' for c in columns)
    return (
        f"INSERT INTO {table.name} ({quoted}) "
        f"VALUES ({', '.join([mark] * len(columns))})"
    )


def delete_segments(
    conn: sa.Connection, spool: str, segments: Sequence[int]
) -> dict[int, int]:
    """Delete the rows of *segments* of *spool*; return the count per
    segment. Other spools' rows with the same segment numbers stay.

    Only the spool's garbage collector and its recovery scan call this,
    once the segment files are gone (see the module docstring).
    """
    where = sa.and_(messages.c.spool == spool, messages.c.segment.in_(segments))
    counts: dict[int, int] = {
        segment: count
        for segment, count in conn.execute(
            sa.select(messages.c.segment, sa.func.count())
            .where(where)
            .group_by(messages.c.segment)
        )
    }
    ids = sa.select(messages.c.queue_id).where(where)
    # Explicit rather than ON DELETE CASCADE: SQLite only cascades when
    # the connection enabled foreign keys.
    conn.execute(recipients.delete().where(recipients.c.queue_id.in_(ids)))
    conn.execute(messages.delete().where(where))
    return counts
