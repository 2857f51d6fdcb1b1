"""Contacts and their custom fields: the rules above the rows of
``store/contacts.py``.

Who calls: the API (``api/v3/marketing_*.py``), the CSV import and
export (``campaigns/csvio.py``), double opt-in (``campaigns/optin.py``)
and the CLI. Every function takes an open ``sa.Connection`` so that a
caller groups work in one transaction (an import commits per batch).

Rules kept here and nowhere else:

- An address is checked with the SMTP server's own path parser, so a
  contact we accept is one delivery can send to, and lower-cased whole
  (RFC 5321 lets the local part be case-sensitive, but no provider
  treats it so and SendGrid lower-cases too; one row per person matters
  more than that corner).
- Custom field values must name a defined field and fit its type:
  ``text`` (a string, at most 1000 characters), ``number`` (a JSON
  number, or text that parses as one), ``date`` (ISO ``YYYY-MM-DD``,
  stored so, so that string order is date order in segments).
- Upsert is by address: a new address makes a contact ``unverified``;
  a known one keeps its id and status, gets the names given, and has
  the custom fields given merged into its own (a field absent from the
  input is left alone, as SendGrid's PUT does).
"""

from __future__ import annotations

import datetime as dt
import math
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from postroom.errors import ContactError, UnknownContact
from postroom.protocol.smtp import replies
from postroom.protocol.smtp.syntax import SyntaxProblem, parse_path
from postroom.store import contacts as table
from postroom.store.contacts import contacts, field_definitions, list_members

MAX_TEXT_LENGTH = 1000
# Field names go into JSON paths and CSV headers: keep them plain.
FIELD_NAME = re.compile(r"[a-z_][a-z0-9_]{0,49}\Z")
# Names a custom field may not take: the contact's own columns.
RESERVED = frozenset(
    {"id", "email", "first_name", "last_name", "status", "created_at",
     "updated_at", "verified_at", "list_ids"}
)


@dataclass(frozen=True)
class Contact:
    """One contact as stored; times are timezone-aware UTC."""

    id: str
    email: str
    first_name: str | None
    last_name: str | None
    custom_fields: dict[str, Any]
    status: str
    created_at: dt.datetime
    updated_at: dt.datetime
    verified_at: dt.datetime | None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "email": self.email,
            "first_name": self.first_name,
            "last_name": self.last_name,
            "custom_fields": self.custom_fields,
            "status": self.status,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "verified_at": _iso(self.verified_at),
        }


@dataclass
class ContactInput:
    """What an import row or an API item says about one contact. None
    means "not given" (leave the stored value alone)."""

    email: str
    first_name: str | None = None
    last_name: str | None = None
    custom_fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class UpsertResult:
    created: int = 0
    updated: int = 0
    ids: list[str] = field(default_factory=list)


def normalize_email(raw: str, field_path: str = "email") -> str:
    """*raw* lower-cased, or ContactError if it is not an address
    delivery could send to."""
    text = raw.strip()
    if not text or len(text) > table.MAX_EMAIL_LENGTH:
        raise ContactError(f"not an email address: {raw!r}", field_path)
    try:
        parse_path(f"<{text}>", null_ok=False, bad=replies.RCPT_SYNTAX)
    except SyntaxProblem:
        raise ContactError(f"not an email address: {raw!r}", field_path) from None
    if "@" not in text:
        # parse_path takes a bare "postmaster"; a contact needs a domain.
        raise ContactError(f"not an email address: {raw!r}", field_path)
    return text.lower()


# Field definitions.


def define_field(conn: sa.Connection, name: str, type_: str) -> None:
    """Define custom field *name* of *type_*; ContactError if the name
    is malformed, reserved or taken, or the type unknown."""
    if not FIELD_NAME.match(name) or name in RESERVED:
        raise ContactError(
            f"bad field name {name!r}: lower-case letters, digits and _, "
            "not one of the contact's own columns", "name")
    if type_ not in table.FIELD_TYPES:
        raise ContactError(
            f"unknown field type {type_!r} (known: {', '.join(table.FIELD_TYPES)})",
            "field_type")
    if name in field_types(conn):
        raise ContactError(f"field {name!r} already exists", "name")
    conn.execute(field_definitions.insert().values(
        name=name, type=type_, created_at=table.now()))


def field_types(conn: sa.Connection) -> dict[str, str]:
    """Every defined custom field: name -> type."""
    rows = conn.execute(sa.select(field_definitions).order_by(
        field_definitions.c.name))
    return {row.name: row.type for row in rows}


def delete_field(conn: sa.Connection, name: str) -> None:
    """Forget the definition. XXX: values stay in contacts' JSON until
    each is next written, because removing them means rewriting every
    row; they are invisible to segments and export meanwhile."""
    result = conn.execute(
        field_definitions.delete().where(field_definitions.c.name == name))
    if result.rowcount == 0:
        raise UnknownContact(f"no such field: {name}", "name")


def check_custom(
    types: Mapping[str, str], values: Mapping[str, Any], prefix: str = "custom_fields"
) -> dict[str, Any]:
    """*values* converted to their stored form; ContactError naming the
    first bad field (``<prefix>.<name>``). None or "" clears a field."""
    clean: dict[str, Any] = {}
    for name, value in values.items():
        path = f"{prefix}.{name}" if prefix else name
        kind = types.get(name)
        if kind is None:
            raise ContactError(f"unknown custom field {name!r}", path)
        if value is None or value == "":
            clean[name] = None
            continue
        clean[name] = _convert(kind, value, path)
    return clean


def _convert(kind: str, value: Any, path: str) -> Any:
    if kind == "text":
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ContactError("expected text", path)
        text = str(value)
        if len(text) > MAX_TEXT_LENGTH:
            raise ContactError(f"longer than {MAX_TEXT_LENGTH} characters", path)
        return text
    if kind == "number":
        if isinstance(value, bool):
            raise ContactError("expected a number", path)
        try:
            number = float(value) if isinstance(value, str) else value
        except ValueError:
            raise ContactError(f"expected a number, got {value!r}", path) from None
        if not isinstance(number, int | float) or not math.isfinite(number):
            raise ContactError(f"expected a number, got {value!r}", path)
        # Keep integers integral, so that an export shows "3", not "3.0".
        return int(number) if float(number).is_integer() else number
    try:
        return dt.date.fromisoformat(str(value)).isoformat()
    except ValueError:
        raise ContactError(
            f"expected a date YYYY-MM-DD, got {value!r}", path) from None


# Contacts.


def upsert(
    conn: sa.Connection,
    items: Sequence[ContactInput],
    list_ids: Iterable[str] = (),
    types: Mapping[str, str] | None = None,
) -> UpsertResult:
    """Create or update *items* (already validated: ``normalize_email``
    and ``check_custom``), add each to *list_ids*. A later item for the
    same address wins over an earlier one, field by field."""
    now = table.now()
    result = UpsertResult()
    existing = _by_email(conn, {item.email for item in items})
    inserts: dict[str, dict[str, Any]] = {}
    updates: dict[str, dict[str, Any]] = {}
    for item in items:
        known = existing.get(item.email)
        if known is None:
            # New: one row, inserted with the others of the batch below.
            contact_id = str(uuid.uuid4())
            custom = _merge({}, item.custom_fields)
            inserts[item.email] = {
                "id": contact_id, "email": item.email,
                "first_name": item.first_name, "last_name": item.last_name,
                "custom_fields": custom, "status": "unverified",
                "created_at": now, "updated_at": now, "verified_at": None}
            existing[item.email] = (contact_id, custom)
            result.created += 1
        else:
            contact_id, custom = known
            custom = _merge(custom, item.custom_fields)
            existing[item.email] = (contact_id, custom)
            pending = inserts.get(item.email) or updates.setdefault(
                item.email, {"cid": contact_id})
            pending["custom_fields"] = custom
            if item.first_name is not None:
                pending["first_name"] = item.first_name
            if item.last_name is not None:
                pending["last_name"] = item.last_name
            result.updated += 1
        result.ids.append(contact_id)

    # One executemany per shape: far fewer round trips than a
    # statement per row, which an import of 100,000 rows would feel.
    if inserts:
        conn.execute(contacts.insert(), list(inserts.values()))
    shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for values in updates.values():
        shapes.setdefault(tuple(sorted(values)), []).append(values)
    for shape, rows in shapes.items():
        columns: dict[str, Any] = {
            name: sa.bindparam(name) for name in shape if name != "cid"}
        conn.execute(
            contacts.update().where(contacts.c.id == sa.bindparam("cid"))
            .values(updated_at=now, **columns), rows)
    for list_id in list_ids:
        add_members(conn, list_id, result.ids)
    return result


def _merge(stored: dict[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(stored)
    for name, value in given.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    return merged


def _by_email(
    conn: sa.Connection, emails: set[str]
) -> dict[str, tuple[str, dict[str, Any]]]:
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    # SQLite allows 32766 bound parameters; stay far below.
    pending = sorted(emails)
    for start in range(0, len(pending), 500):
        chunk = pending[start:start + 500]
        rows = conn.execute(
            sa.select(contacts.c.id, contacts.c.email, contacts.c.custom_fields)
            .where(contacts.c.email.in_(chunk)))
        for row in rows:
            found[row.email] = (row.id, dict(row.custom_fields or {}))
    return found


def get(conn: sa.Connection, contact_id: str) -> Contact:
    row = conn.execute(
        sa.select(contacts).where(contacts.c.id == contact_id)).one_or_none()
    if row is None:
        raise UnknownContact(f"no such contact: {contact_id}", "id")
    return from_row(row)


def get_by_email(conn: sa.Connection, email: str) -> Contact:
    address = normalize_email(email)
    row = conn.execute(
        sa.select(contacts).where(contacts.c.email == address)).one_or_none()
    if row is None:
        raise UnknownContact(f"no such contact: {address}", "email")
    return from_row(row)


def delete(conn: sa.Connection, contact_ids: Sequence[str]) -> int:
    """Delete contacts (and their memberships); return how many were."""
    ids = list(contact_ids)
    conn.execute(list_members.delete().where(list_members.c.contact_id.in_(ids)))
    return int(conn.execute(contacts.delete().where(contacts.c.id.in_(ids)))
               .rowcount)


def set_status(
    conn: sa.Connection, contact_id: str, status: str,
    when: dt.datetime | None = None,
) -> None:
    if status not in table.STATUSES:
        raise ContactError(f"unknown status {status!r}", "status")
    values: dict[str, Any] = {"status": status, "updated_at": when or table.now()}
    if status == "verified":
        values["verified_at"] = when or table.now()
    result = conn.execute(
        contacts.update().where(contacts.c.id == contact_id).values(**values))
    if result.rowcount == 0:
        raise UnknownContact(f"no such contact: {contact_id}", "id")


def count(conn: sa.Connection, where: sa.ColumnElement[bool] | None = None) -> int:
    query = sa.select(sa.func.count()).select_from(contacts)
    if where is not None:
        query = query.where(where)
    return int(conn.execute(query).scalar_one())


def search(
    conn: sa.Connection,
    where: sa.ColumnElement[bool] | None = None,
    *, limit: int = 100, offset: int = 0,
) -> list[Contact]:
    """Contacts matching *where* (a segment's expression), by address."""
    query = sa.select(contacts).order_by(contacts.c.email)
    if where is not None:
        query = query.where(where)
    rows = conn.execute(query.limit(limit).offset(offset))
    return [from_row(row) for row in rows]


def add_members(conn: sa.Connection, list_id: str, contact_ids: Sequence[str]) -> int:
    """Put contacts on a list (those already on it stay); return how
    many were added. UnknownContact for an unknown list."""
    from postroom.campaigns import lists

    lists.get(conn, list_id)
    ids = sorted(set(contact_ids))
    on: set[str] = set()
    for start in range(0, len(ids), 500):
        on.update(conn.execute(
            sa.select(list_members.c.contact_id).where(
                list_members.c.list_id == list_id,
                list_members.c.contact_id.in_(ids[start:start + 500]))).scalars())
    new = [cid for cid in ids if cid not in on]
    if new:
        now = table.now()
        conn.execute(list_members.insert(), [
            {"list_id": list_id, "contact_id": cid, "added_at": now} for cid in new])
    return len(new)


def remove_members(
    conn: sa.Connection, list_id: str, contact_ids: Sequence[str]
) -> int:
    result = conn.execute(list_members.delete().where(
        list_members.c.list_id == list_id,
        list_members.c.contact_id.in_(list(contact_ids))))
    return int(result.rowcount)


def from_row(row: sa.Row[Any]) -> Contact:
    created = table.utc(row.created_at)
    updated = table.utc(row.updated_at)
    assert created is not None and updated is not None
    return Contact(
        id=row.id, email=row.email, first_name=row.first_name,
        last_name=row.last_name, custom_fields=dict(row.custom_fields or {}),
        status=row.status, created_at=created, updated_at=updated,
        verified_at=table.utc(row.verified_at),
    )


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")
