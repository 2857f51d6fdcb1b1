"""The event store's table: one row per thing that happened to a
message for a recipient (``postroom/events.py`` names the kinds and
writes the rows).

Rows are only ever appended. ``id`` grows with every insert, and the
webhook sender (``webhooks/sender.py``) reads the table in ``id`` order
from a per-endpoint cursor: with SQLite's single writer an id is never
seen after a larger one has been, so a cursor never skips a row.
XXX: on PostgreSQL, concurrent transactions may commit ids out of
order and a cursor could pass over one still uncommitted; cluster mode
needs a commit-ordered sequence (or a short visibility delay) first.
"""

from __future__ import annotations

import sqlalchemy as sa

from postroom.store.db import metadata

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(16), nullable=False),
    # Epoch seconds.
    sa.Column("time", sa.Float, nullable=False),
    # The message and the recipient's place in its envelope (NULL for
    # events about no queued message, such as a drop of a whole request).
    sa.Column("queue_id", sa.String(32), nullable=True),
    sa.Column("idx", sa.Integer, nullable=True),
    # Lower-cased, as the suppression lists keep addresses.
    sa.Column("recipient", sa.Text, nullable=False),
    # SendGrid's sg_message_id: "<X-Message-Id>.<queue id>.<idx>".
    sa.Column("message_id", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("response", sa.Text, nullable=True),
    # The enhanced status code (RFC 3463), "5.1.1".
    sa.Column("status", sa.String(16), nullable=True),
    sa.Column("attempt", sa.Integer, nullable=True),
    # JSON text, as the API request gave them.
    sa.Column("categories", sa.Text, nullable=True),
    sa.Column("custom_args", sa.Text, nullable=True),
    sa.Column("campaign_id", sa.String(64), nullable=True),
    # JSON object of kind-specific fields (bounce type and class, ...).
    sa.Column("extra", sa.Text, nullable=True),
    # Time-range queries and replays.
    sa.Index("ix_events_time", "time"),
    # "What happened to this address?"
    sa.Index("ix_events_recipient_time", "recipient", "time"),
)

# The order of the tuples postroom/events.py builds.
COLUMNS = (
    "kind",
    "time",
    "queue_id",
    "idx",
    "recipient",
    "message_id",
    "reason",
    "response",
    "status",
    "attempt",
    "categories",
    "custom_args",
    "campaign_id",
    "extra",
)
INSERT = (
    f"INSERT INTO events ({', '.join(COLUMNS)}) "
    f"VALUES ({', '.join(['?'] * len(COLUMNS))})"
)
