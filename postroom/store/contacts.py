"""Contacts, lists, list membership, custom field definitions and
segments (the rows; the rules are in ``postroom.campaigns``).

A contact is one address, stored lower-cased and unique, so that an
import, the API and a confirmation click all find the same row however
the address was typed. Custom fields live in one JSON column rather
than a table of (contact, field, value) rows: a contact is read and
written whole, and SQLite, PostgreSQL and MySQL can all reach into JSON
in a WHERE clause (``contacts.c.custom_fields["city"]``), which is all
segments need. Which custom fields exist, and their types, is kept in
``field_definitions``; values are checked against it before they are
stored (``campaigns/contacts.py``), never here.

``status`` is one of ``STATUSES``. Only ``verified`` contacts receive
campaigns (``campaigns/eligible.py``); a contact is ``pending`` while a
confirmation mail is out, and ``unsubscribed`` or ``bounced`` are set
by the unsubscribe and bounce handling.

Membership rows are deleted explicitly when a list or contact goes,
not left to ``ON DELETE CASCADE``: the cascade needs SQLite's
``foreign_keys`` pragma, which another tool opening the file may not set
(as ``store/templates.py`` does for versions).
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from postroom.store.db import metadata

STATUSES = ("unverified", "pending", "verified", "unsubscribed", "bounced")
FIELD_TYPES = ("text", "number", "date")
# RFC 5321 §4.5.3.1.3 caps a path at 256 octets including the brackets.
MAX_EMAIL_LENGTH = 254
MAX_NAME_LENGTH = 100

contacts = sa.Table(
    "contacts",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("email", sa.String(MAX_EMAIL_LENGTH), nullable=False, unique=True),
    sa.Column("first_name", sa.String(MAX_NAME_LENGTH), nullable=True),
    sa.Column("last_name", sa.String(MAX_NAME_LENGTH), nullable=True),
    sa.Column("custom_fields", sa.JSON, nullable=False, default=dict),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    # Stored in UTC. SQLite keeps no zone, so reads re-attach UTC.
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("verified_at", sa.DateTime(timezone=True), nullable=True),
)

contact_lists = sa.Table(
    "contact_lists",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(MAX_NAME_LENGTH), nullable=False, unique=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

list_members = sa.Table(
    "list_members",
    metadata,
    sa.Column(
        "list_id",
        sa.String(36),
        sa.ForeignKey("contact_lists.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column(
        "contact_id",
        sa.String(36),
        sa.ForeignKey("contacts.id", ondelete="CASCADE"),
        primary_key=True,
        index=True,
    ),
    sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
)

field_definitions = sa.Table(
    "field_definitions",
    metadata,
    sa.Column("name", sa.String(50), primary_key=True),
    sa.Column("type", sa.String(8), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

segments = sa.Table(
    "segments",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(MAX_NAME_LENGTH), nullable=False, unique=True),
    # The condition tree as JSON (``campaigns/segments.py``), checked
    # when saved; NULL list: over all contacts.
    sa.Column("conditions", sa.JSON, nullable=False),
    sa.Column("list_id", sa.String(36), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def utc(value: dt.datetime | None) -> dt.datetime | None:
    # SQLite keeps no zone, so reads re-attach UTC.
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
