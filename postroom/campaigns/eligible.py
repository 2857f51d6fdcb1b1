"""Who may receive a campaign: the one query campaigns use.

``eligible_contacts(conn, list_id=..., segment_id=...)`` streams the
contacts of a list or segment that are ``verified``, and not
suppressed. Not ``unsubscribed`` and not ``bounced`` follow from
``verified``: those statuses replace it. Everything is one SELECT
(status, membership, segment tree and the suppression check all in
SQL), read in batches, so fan-out over a large list holds one batch in
memory and the database does the filtering.

Suppression is kept by the events/suppressions part
(``postroom/suppressions.py``, table ``suppressions``). Here only the
global lists count (bounces, unsubscribes, spam reports, invalid
addresses): a per-group unsubscribe depends on the campaign's group,
which the campaign applies at send time (dropping with a ``dropped``
event), as it must anyway for addresses suppressed after this query.
"""

from __future__ import annotations

from collections.abc import Iterator

import sqlalchemy as sa

from postroom import suppressions
from postroom.campaigns import contacts, segments
from postroom.campaigns.contacts import Contact
from postroom.store.contacts import contacts as contacts_table
from postroom.store.suppressions import suppressions as suppression_rows

BATCH = 1000


def suppressed_filter() -> sa.ColumnElement[bool]:
    """SQL: the contact's address is on a global suppression list."""
    table = suppression_rows
    return sa.exists().where(
        table.c.email == contacts_table.c.email,
        table.c.kind.in_(suppressions.GLOBAL),
    )


def is_suppressed(conn: sa.Connection, address: str) -> bool:
    """Whether *address* is on a global suppression list."""
    return suppressions.is_suppressed(conn, address)


def eligible_contacts(
    conn: sa.Connection,
    *,
    list_id: str | None = None,
    segment_id: str | None = None,
) -> Iterator[Contact]:
    """The verified, unsuppressed contacts of a list or a saved
    segment (exactly one of the two), by address. UnknownContact for an
    unknown list or segment; ContactError when a segment names a field
    deleted since it was saved."""
    if (list_id is None) == (segment_id is None):
        raise ValueError("give a list or a segment")
    query = sa.select(contacts_table).where(contacts_table.c.status == "verified")
    if list_id is not None:
        from postroom.campaigns import lists

        lists.get(conn, list_id)
        query = query.where(segments.members_of(list_id))
    else:
        assert segment_id is not None
        segment = segments.get(conn, segment_id)
        query = query.where(segments.where(segment, contacts.field_types(conn)))
    query = query.where(sa.not_(suppressed_filter()))
    result = conn.execution_options(yield_per=BATCH).execute(
        query.order_by(contacts_table.c.email))
    for row in result:
        yield contacts.from_row(row)
