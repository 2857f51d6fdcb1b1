"""Contact lists: named sets of contacts (``contact_lists`` and
``list_members`` in ``store/contacts.py``).

A list is a name and its members; a contact may be on any number of
lists. Deleting a list deletes its memberships, never its contacts
(SendGrid's ``delete_contacts=false``, the safe default). Names are
unique so that the CLI can take a name where the API takes an id:
``resolve`` accepts either.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from postroom.errors import ContactError, UnknownContact
from postroom.store import contacts as table
from postroom.store.contacts import contact_lists, list_members


@dataclass(frozen=True)
class ContactList:
    id: str
    name: str
    contact_count: int
    created_at: dt.datetime

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name,
                "contact_count": self.contact_count,
                "created_at": self.created_at.strftime("%Y-%m-%dT%H:%M:%SZ")}


def create(conn: sa.Connection, name: str) -> ContactList:
    """A new, empty list; ContactError if *name* is empty or taken."""
    name = name.strip()
    if not name or len(name) > table.MAX_NAME_LENGTH:
        raise ContactError(
            f"a list name has 1 to {table.MAX_NAME_LENGTH} characters", "name")
    if _find(conn, contact_lists.c.name == name) is not None:
        raise ContactError(f"a list named {name!r} exists", "name")
    made = ContactList(str(uuid.uuid4()), name, 0, table.now())
    conn.execute(contact_lists.insert().values(
        id=made.id, name=name, created_at=made.created_at))
    return made


def get(conn: sa.Connection, list_id: str) -> ContactList:
    found = _find(conn, contact_lists.c.id == list_id)
    if found is None:
        raise UnknownContact(f"no such list: {list_id}", "id")
    return found


def resolve(conn: sa.Connection, id_or_name: str) -> ContactList:
    """The list with this id, else with this name."""
    found = _find(conn, contact_lists.c.id == id_or_name) or _find(
        conn, contact_lists.c.name == id_or_name)
    if found is None:
        raise UnknownContact(f"no such list: {id_or_name}", "id")
    return found


def list_all(conn: sa.Connection) -> list[ContactList]:
    return _select(conn, None)


def rename(conn: sa.Connection, list_id: str, name: str) -> ContactList:
    get(conn, list_id)
    name = name.strip()
    other = _find(conn, contact_lists.c.name == name)
    if not name or (other is not None and other.id != list_id):
        raise ContactError(f"bad or taken list name {name!r}", "name")
    conn.execute(contact_lists.update().where(contact_lists.c.id == list_id)
                 .values(name=name))
    return get(conn, list_id)


def delete(conn: sa.Connection, list_id: str) -> None:
    """Delete the list and its memberships; the contacts stay."""
    get(conn, list_id)
    conn.execute(list_members.delete().where(list_members.c.list_id == list_id))
    conn.execute(contact_lists.delete().where(contact_lists.c.id == list_id))


def _find(
    conn: sa.Connection, where: sa.ColumnElement[bool]
) -> ContactList | None:
    found = _select(conn, where)
    return found[0] if found else None


def _select(
    conn: sa.Connection, where: sa.ColumnElement[bool] | None
) -> list[ContactList]:
    members = (
        sa.select(sa.func.count())
        .where(list_members.c.list_id == contact_lists.c.id)
        .scalar_subquery()
    )
    query = sa.select(contact_lists, members.label("n")).order_by(
        contact_lists.c.name)
    if where is not None:
        query = query.where(where)
    out = []
    for row in conn.execute(query):
        created = table.utc(row.created_at)
        assert created is not None
        out.append(ContactList(row.id, row.name, int(row.n), created))
    return out
