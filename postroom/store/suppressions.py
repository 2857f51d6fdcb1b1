"""Suppression tables: addresses mail must not go to, and the
unsubscribe groups (SendGrid's ASM groups) recipients opt out of.

One table holds every list, told apart by ``kind`` (see
``postroom/suppressions.py``): the question asked at every send is
"is this address on any list that applies?", which one index on
``email`` answers in one lookup, where a table per list would take one
query per list. ``group_id`` is 0 for the lists that are not per
group, so the unique key works (SQLite and PostgreSQL both treat NULLs
in a unique key as distinct).
"""

from __future__ import annotations

import sqlalchemy as sa

from postroom.store.db import metadata

suppressions = sa.Table(
    "suppressions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    # Lower-cased address.
    sa.Column("email", sa.Text, nullable=False),
    sa.Column("kind", sa.String(24), nullable=False),
    sa.Column("group_id", sa.Integer, nullable=False, server_default="0"),
    # Epoch seconds of the (last) addition.
    sa.Column("created", sa.Float, nullable=False),
    # Why: the bounce reply, "added by API", ...; and its enhanced status.
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("status", sa.String(16), nullable=True),
    # Leads with email: the send-time lookup.
    sa.UniqueConstraint("email", "kind", "group_id", name="uq_suppressions"),
    # Listing one list by time.
    sa.Index("ix_suppressions_kind_created", "kind", "group_id", "created"),
)

asm_groups = sa.Table(
    "asm_groups",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(100), nullable=False, unique=True),
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    sa.Column("is_default", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created", sa.Float, nullable=False),
)
