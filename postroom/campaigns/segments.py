"""Segments: saved filters over contact fields, as a JSON condition
tree compiled to a SQLAlchemy expression.

The language, the whole of it::

    condition := {"and": [condition, ...]}
               | {"or":  [condition, ...]}
               | {"not": condition}
               | {"field": NAME, "op": OP, "value": VALUE}
    NAME      := email | first_name | last_name | status | created_at
               | updated_at | verified_at | custom.<defined field>
    OP        := eq | ne | lt | le | gt | ge          (VALUE: a scalar)
               | contains | starts_with | ends_with   (VALUE: a string)
               | in                                   (VALUE: a list)
               | exists                               (VALUE: true/false)

Why a tree and not a query string (SendGrid's segments take SQL-ish
text): a tree needs no parser, so no parser bugs, and every part of it
is checked against a closed vocabulary before anything reaches the
database. Injection is impossible by construction: field names map to
columns through a table here (a custom field must be defined, and its
name matches ``[a-z_][a-z0-9_]*`` besides), operators map to
SQLAlchemy operators, and every value is a bound parameter. ``LIKE``
patterns escape ``%``, ``_`` and the escape character itself, so
``contains "50%"`` means the text, not a wildcard.

The whole tree is evaluated in SQL (custom fields through the JSON
column's path operator, ``json_extract`` on SQLite), so a segment of a
million contacts is one query, streamed by its caller. Limits keep a
saved filter from becoming a denial of service: at most ``MAX_DEPTH``
levels and ``MAX_NODES`` conditions, ``MAX_IN`` values per ``in``.
Numbers compare as numbers (custom ``number`` fields); dates as their
ISO text, whose order is the dates' order.

``to_sql`` raises ContactError with a path into the tree
(``conditions.and.1.value``) for anything it refuses.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from postroom.errors import ContactError, UnknownContact
from postroom.store import contacts as table
from postroom.store.contacts import contacts, list_members, segments

MAX_DEPTH = 8
MAX_NODES = 100
MAX_IN = 1000

_COLUMNS: dict[str, sa.ColumnElement[Any]] = {
    "email": contacts.c.email,
    "first_name": contacts.c.first_name,
    "last_name": contacts.c.last_name,
    "status": contacts.c.status,
    "created_at": contacts.c.created_at,
    "updated_at": contacts.c.updated_at,
    "verified_at": contacts.c.verified_at,
}
_TIMES = {"created_at", "updated_at", "verified_at"}
_COMPARE: dict[str, Callable[[Any, Any], sa.ColumnElement[bool]]] = {
    "eq": lambda c, v: c == v,
    "ne": lambda c, v: c != v,
    "lt": lambda c, v: c < v,
    "le": lambda c, v: c <= v,
    "gt": lambda c, v: c > v,
    "ge": lambda c, v: c >= v,
}
_LIKE = {"contains": "%{}%", "starts_with": "{}%", "ends_with": "%{}"}
OPERATORS = (*_COMPARE, *_LIKE, "in", "exists")


@dataclass(frozen=True)
class Segment:
    id: str
    name: str
    conditions: dict[str, Any]
    list_id: str | None
    created_at: dt.datetime
    updated_at: dt.datetime

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name,
                "conditions": self.conditions, "parent_list_id": self.list_id,
                "created_at": _iso(self.created_at),
                "updated_at": _iso(self.updated_at)}


def to_sql(
    tree: Any, types: Mapping[str, str], path: str = "conditions"
) -> sa.ColumnElement[bool]:
    """The WHERE expression of *tree*, given the custom field *types*."""
    counter = [0]
    return _node(tree, types, path, 1, counter)


def _node(
    tree: Any, types: Mapping[str, str], path: str, depth: int, counter: list[int]
) -> sa.ColumnElement[bool]:
    # Cheap refusals first: shape, depth, size.
    if not isinstance(tree, dict) or len(tree) == 0:
        raise ContactError("expected a condition object", path)
    if depth > MAX_DEPTH:
        raise ContactError(f"nested deeper than {MAX_DEPTH} levels", path)
    counter[0] += 1
    if counter[0] > MAX_NODES:
        raise ContactError(f"more than {MAX_NODES} conditions", path)

    if set(tree) <= {"and"} or set(tree) <= {"or"}:
        (word, items), = tree.items()
        if not isinstance(items, list) or not items:
            raise ContactError(f"{word!r} takes a non-empty list", f"{path}.{word}")
        parts = [_node(item, types, f"{path}.{word}.{i}", depth + 1, counter)
                 for i, item in enumerate(items)]
        return sa.and_(*parts) if word == "and" else sa.or_(*parts)
    if set(tree) == {"not"}:
        return sa.not_(_node(tree["not"], types, f"{path}.not", depth + 1, counter))
    if set(tree) == {"field", "op", "value"}:
        return _leaf(tree, types, path)
    raise ContactError(
        "expected and, or, not, or field + op + value", path)


def _leaf(
    tree: dict[str, Any], types: Mapping[str, str], path: str
) -> sa.ColumnElement[bool]:
    name, op, value = tree["field"], tree["op"], tree["value"]
    if op not in OPERATORS:
        raise ContactError(
            f"unknown operator {op!r} (known: {', '.join(OPERATORS)})", f"{path}.op")
    column, kind = _column(name, types, f"{path}.field")

    if op == "exists":
        if not isinstance(value, bool):
            raise ContactError("exists takes true or false", f"{path}.value")
        return column.is_not(None) if value else column.is_(None)
    if op == "in":
        if not isinstance(value, list) or not value or len(value) > MAX_IN:
            raise ContactError(
                f"in takes a list of 1 to {MAX_IN} values", f"{path}.value")
        return column.in_([_value(v, kind, f"{path}.value.{i}")
                           for i, v in enumerate(value)])
    if op in _LIKE:
        if not isinstance(value, str) or kind != "text":
            raise ContactError(f"{op} takes text, on a text field", f"{path}.value")
        escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return column.like(_LIKE[op].format(escaped), escape="\\")
    compared: sa.ColumnElement[bool] = _COMPARE[op](
        column, _value(value, kind, f"{path}.value"))
    return compared


def _column(
    name: Any, types: Mapping[str, str], path: str
) -> tuple[sa.ColumnElement[Any], str]:
    if not isinstance(name, str):
        raise ContactError("expected a field name", path)
    if name in _COLUMNS:
        return _COLUMNS[name], "time" if name in _TIMES else "text"
    custom = name.removeprefix("custom.")
    if custom != name and custom in types:
        kind = types[custom]
        element = contacts.c.custom_fields[custom]
        if kind == "number":
            return element.as_float(), kind
        return element.as_string(), kind
    raise ContactError(f"unknown field {name!r}", path)


def _value(value: Any, kind: str, path: str) -> Any:
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ContactError("expected a number", path)
        return value
    if not isinstance(value, str):
        raise ContactError("expected a string", path)
    if kind == "date":
        try:
            return dt.date.fromisoformat(value).isoformat()
        except ValueError:
            raise ContactError("expected a date YYYY-MM-DD", path) from None
    if kind == "time":
        try:
            moment = dt.datetime.fromisoformat(value)
        except ValueError:
            raise ContactError("expected an ISO 8601 time", path) from None
        # Stored as naive UTC by SQLite; compare like with like.
        if moment.tzinfo is not None:
            moment = moment.astimezone(dt.UTC)
        return moment.replace(tzinfo=None)
    return value


def members_of(list_id: str) -> sa.ColumnElement[bool]:
    """The expression "on list *list_id*"."""
    return contacts.c.id.in_(
        sa.select(list_members.c.contact_id).where(list_members.c.list_id == list_id))


# Saved segments.


def create(
    conn: sa.Connection, name: str, conditions: Any, list_id: str | None,
    types: Mapping[str, str],
) -> Segment:
    """Check and save a segment; ContactError for a bad tree or name."""
    to_sql(conditions, types)
    name = name.strip()
    if not name or len(name) > table.MAX_NAME_LENGTH:
        raise ContactError("a segment needs a name", "name")
    if conn.execute(sa.select(segments.c.id).where(segments.c.name == name)).first():
        raise ContactError(f"a segment named {name!r} exists", "name")
    if list_id is not None:
        from postroom.campaigns import lists

        lists.get(conn, list_id)
    now = table.now()
    made = Segment(str(uuid.uuid4()), name, conditions, list_id, now, now)
    conn.execute(segments.insert().values(
        id=made.id, name=name, conditions=conditions, list_id=list_id,
        created_at=now, updated_at=now))
    return made


def get(conn: sa.Connection, segment_id: str) -> Segment:
    """The segment with this id, else with this name."""
    row = conn.execute(sa.select(segments).where(
        sa.or_(segments.c.id == segment_id, segments.c.name == segment_id))
    ).first()
    if row is None:
        raise UnknownContact(f"no such segment: {segment_id}", "id")
    return _segment(row)


def list_all(conn: sa.Connection) -> list[Segment]:
    return [_segment(r) for r in conn.execute(
        sa.select(segments).order_by(segments.c.name))]


def delete(conn: sa.Connection, segment_id: str) -> None:
    """Delete the segment with this id (or name)."""
    found = get(conn, segment_id)
    conn.execute(segments.delete().where(segments.c.id == found.id))


def where(segment: Segment, types: Mapping[str, str]) -> sa.ColumnElement[bool]:
    """The WHERE expression of a saved segment: its tree, within its
    list if it has one. Recompiled at each use, so that a field deleted
    since makes a clear error rather than a silently empty segment."""
    expression = to_sql(segment.conditions, types)
    if segment.list_id is not None:
        expression = sa.and_(members_of(segment.list_id), expression)
    return expression


def _segment(row: sa.Row[Any]) -> Segment:
    created, updated = table.utc(row.created_at), table.utc(row.updated_at)
    assert created is not None and updated is not None
    return Segment(row.id, row.name, dict(row.conditions), row.list_id,
                   created, updated)


def _iso(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")
