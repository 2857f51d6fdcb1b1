"""Queue tables: one row per accepted message, one per recipient.

The spool journal holds the bytes (envelope and content); these tables
are the index the rest of the product queries: where a message's record
lives (``spool``, ``segment``, ``offset``, ``length``), its state, and
the state of each recipient. The spool writes a message's rows in the
batch transaction that follows the journal fsync, and its recovery scan
re-creates rows a power loss took away, so the journal stays the source
of truth (see ``queue/spool.py`` and ``queue/recovery.py``).

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

Recipient states (the ``recipients`` table):

- ``queued``: waiting for its first attempt, due at ``next_attempt``
  (the arrival time).
- ``active``: taken by the delivery engine, an attempt in progress or
  about to be (Postfix's active queue). A delivery engine that starts
  puts every ``active`` recipient back to ``queued``: whoever had them
  is gone (one engine per database; see delivery/engine.py).
- ``deferred``: the last attempt failed temporarily; due again at
  ``next_attempt``.
- ``delivered``, ``bounced``: final. A message whose recipients are all
  final is ``removed``.

``attempts`` keeps one row per recipient per delivery attempt: what the
remote server said, who it was, and how long it took.

Tables that reference ``messages.queue_id`` (``recipients``,
``attempts``) are deleted explicitly with it by ``delete_segments``.
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

# Recipient states beyond QUEUED (see the module docstring).
ACTIVE = "active"
DEFERRED = "deferred"
DELIVERED = "delivered"
BOUNCED = "bounced"
PENDING = (QUEUED, ACTIVE, DEFERRED)
FINAL = (DELIVERED, BOUNCED)

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
    # The domain part in lower case, as given (UTF-8 or A-label): what
    # queue summaries, flush --domain and destination wake-ups select on.
    sa.Column("domain", sa.Text, nullable=False, server_default=""),
    # Epoch seconds when the recipient is next due (QUEUED, DEFERRED).
    sa.Column("next_attempt", sa.Float, nullable=False, server_default="0"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    # A delay notice (RFC 3464) went to the sender already.
    sa.Column("warned", sa.Boolean, nullable=False, server_default=sa.false()),
    # The reply of the last attempt, as "code enhanced text", for listings.
    sa.Column("last_reply", sa.Text, nullable=True),
    # An administrator asked to bounce it (``queue bounce``): the engine
    # returns it to the sender, with a notice, when it next comes due.
    sa.Column("bounce_now", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.CheckConstraint(
        "state IN ('queued', 'active', 'deferred', 'delivered', 'bounced')",
        name="ck_recipients_state",
    ),
    # Finding a message by recipient (CLI, API search).
    sa.Index("ix_recipients_address", "address"),
    # The delivery engine's question: who is due?
    sa.Index("ix_recipients_state_next", "state", "next_attempt"),
)

attempts = sa.Table(
    "attempts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "queue_id",
        sa.String(32),
        sa.ForeignKey("messages.queue_id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("idx", sa.Integer, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("duration", sa.Float, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("failure", sa.String(32), nullable=False, server_default=""),
    sa.Column("remote_host", sa.Text, nullable=True),
    sa.Column("remote_ip", sa.Text, nullable=True),
    sa.Column("remote_port", sa.Integer, nullable=True),
    sa.Column("code", sa.Integer, nullable=False),
    sa.Column("enhanced", sa.String(16), nullable=False, server_default=""),
    sa.Column("reply", sa.Text, nullable=False),
    sa.Column("tls", sa.Text, nullable=False, server_default=""),
    sa.Index("ix_attempts_queue_id", "queue_id", "idx"),
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
    """
    message_rows: list[tuple[object, ...]] = []
    recipient_rows: list[tuple[object, ...]] = []
    for envelope, env_json, size, offset, length in rows:
        row = message_row(spool, envelope, env_json, size, length)
        message_rows.append((*row, segment, offset))
        recipient_rows += new_recipient_rows(envelope)
    insert_rows(conn, message_rows, recipient_rows)


def message_row(
    spool: str, envelope: Envelope, env_json: bytes, size: int, length: int
) -> tuple[object, ...]:
    """The ``messages`` row of a message whose record is about to be
    written to *spool*, all but its place: ``insert_rows`` takes it
    with the segment and the offset appended.

    *size* is the content's, *length* the whole record's. The spool
    builds this as the message arrives, so that the batch that writes
    the record only has to add where it went.
    """
    return (
        envelope.queue_id,
        envelope.sender,
        envelope.received_at or time.time(),
        size,
        spool,
        length,
        QUEUED,
        env_json.decode(),
    )


def new_recipient_rows(envelope: Envelope) -> list[tuple[object, ...]]:
    """The ``recipients`` rows of *envelope*, as ``insert_rows`` takes
    them; each recipient's state comes from the envelope."""
    queue_id = envelope.queue_id
    # A scheduled send (the HTTP API's send_at) is first due at its time.
    due = envelope.not_before or envelope.received_at or time.time()
    return [
        (
            queue_id,
            idx,
            rcpt.address,
            rcpt.state,
            notify_to_column(rcpt.notify),
            rcpt.orcpt,
            rcpt.address.rpartition("@")[2].lower(),
            due,
        )
        for idx, rcpt in enumerate(envelope.recipients)
    ]


def insert_rows(
    conn: sa.Connection,
    message_rows: Sequence[tuple[object, ...]],
    recipient_rows: Sequence[tuple[object, ...]],
) -> None:
    """Insert prepared rows: each of *message_rows* is a ``message_row``
    with ``(segment, offset)`` appended, each of *recipient_rows* one
    from ``new_recipient_rows``.

    The spool calls this once per group commit, on the event loop's
    thread, so it hands plain tuples straight to the driver's
    ``executemany``, on the DBAPI cursor of *conn* and inside its
    transaction: SQLAlchemy's statement machinery, even that of
    ``exec_driver_sql``, cost more than the inserts of a small batch.
    Errors are therefore the driver's own, not SQLAlchemy's wrappers.
    """
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    cursor = dbapi.cursor()
    try:
        if message_rows:
            cursor.executemany(
                _insert_sql(messages, _MESSAGE_COLUMNS, mark), message_rows
            )
        if recipient_rows:
            cursor.executemany(
                _insert_sql(recipients, _RECIPIENT_COLUMNS, mark), recipient_rows
            )
    finally:
        cursor.close()


# The order of the tuples message_row and new_recipient_rows build; the
# place of the record (segment, offset) comes last, added at the batch.
_MESSAGE_COLUMNS = (
    "queue_id",
    "sender",
    "received_at",
    "size",
    "spool",
    "length",
    "state",
    "envelope",
    "segment",
    "offset",
)
_RECIPIENT_COLUMNS = (
    "queue_id",
    "idx",
    "address",
    "state",
    "notify",
    "orcpt",
    "domain",
    "next_attempt",
)


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
    conn.execute(attempts.delete().where(attempts.c.queue_id.in_(ids)))
    conn.execute(recipients.delete().where(recipients.c.queue_id.in_(ids)))
    conn.execute(messages.delete().where(where))
    return counts
