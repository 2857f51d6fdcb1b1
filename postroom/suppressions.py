"""Suppression lists: who must not be sent to, and why.

Lists (``kind``), as SendGrid keeps them:

- ``bounce``: hard bounces. Added by hand, by the API, and by the
  delivery engine when a recipient bounces for a bad mailbox or a bad
  domain (``delivery/classify.py`` BAD_MAILBOX, BAD_DOMAIN): mail to
  that address cannot succeed, and sending it again hurts the sending
  reputation. Other bounces (policy, content, spam blocks) are about
  the message or the sender, not the address, and are not listed.
- ``unsubscribe``: global unsubscribes: the address wants nothing.
- ``group_unsubscribe``: unsubscribed from one group (``asm_groups``):
  the address still gets mail of other groups and mail with no group.
- ``spamreport``: the recipient called a message spam.
- ``invalid``: addresses put here by hand as unusable ("manual").

At send time (``is_suppressed``, ``suppressed``) every list but the
group ones applies; a group's list applies to mail sent in that group.
Addresses are compared in lower case, as SendGrid does (a local part
is case-sensitive in RFC 5321 §2.4, but no mailbox provider treats it
so, and a list that missed "Ann@" for "ann@" would be worse).

All functions are blocking SQLAlchemy Core; the API calls them on a
thread. Contacts and campaigns use ``suppressed`` to filter a batch of
recipients with one query per 500 addresses.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from postroom.store.suppressions import asm_groups, suppressions

BOUNCE = "bounce"
UNSUBSCRIBE = "unsubscribe"
GROUP_UNSUBSCRIBE = "group_unsubscribe"
SPAMREPORT = "spamreport"
INVALID = "invalid"
KINDS = (BOUNCE, UNSUBSCRIBE, GROUP_UNSUBSCRIBE, SPAMREPORT, INVALID)
# The lists that apply to every message, whatever its group.
GLOBAL = (BOUNCE, UNSUBSCRIBE, SPAMREPORT, INVALID)

# The "reason" of a dropped event, by list: SendGrid's words.
DROP_REASONS = {
    BOUNCE: "Bounced Address",
    UNSUBSCRIBE: "Unsubscribed Address",
    GROUP_UNSUBSCRIBE: "Unsubscribed Address",
    SPAMREPORT: "Spam Reporting Address",
    INVALID: "Invalid",
}

_S = suppressions
_G = asm_groups
_CHUNK = 500


@dataclass(frozen=True)
class Entry:
    email: str
    kind: str
    group_id: int
    created: float
    reason: str | None
    status: str | None


@dataclass(frozen=True)
class Group:
    id: int
    name: str
    description: str
    is_default: bool
    created: float


def normalize(email: str) -> str:
    return email.strip().lower()


def is_suppressed(
    conn: sa.Connection, email: str, group_id: int | None = None
) -> bool:
    """Whether mail to *email* (in group *group_id*, if any) must be
    dropped."""
    return bool(suppressed(conn, [email], group_id))


def suppressed(
    conn: sa.Connection, emails: Iterable[str], group_id: int | None = None
) -> dict[str, str]:
    """Of *emails*, those that must be dropped, each (normalized) with
    the list that says so (a global list before the group's). One query
    per 500 addresses."""
    wanted = sorted({normalize(e) for e in emails})
    found: dict[str, str] = {}
    applies = sa.or_(
        _S.c.kind.in_(GLOBAL),
        sa.and_(_S.c.kind == GROUP_UNSUBSCRIBE, _S.c.group_id == group_id)
        if group_id is not None
        else sa.false(),
    )
    for i in range(0, len(wanted), _CHUNK):
        rows = conn.execute(
            sa.select(_S.c.email, _S.c.kind).where(
                _S.c.email.in_(wanted[i : i + _CHUNK]), applies
            )
        )
        for email, kind in rows:
            if found.get(email) in GLOBAL:
                continue
            found[email] = kind
    return found


def add(
    conn: sa.Connection,
    kind: str,
    emails: Iterable[str],
    *,
    group_id: int = 0,
    reason: str | None = None,
    status: str | None = None,
    now: float | None = None,
) -> list[str]:
    """Put *emails* on list *kind* (refreshing the time and reason of
    those already there); return them normalized."""
    _check_kind(kind)
    when = time.time() if now is None else now
    listed = sorted({normalize(e) for e in emails if e.strip()})
    if listed:
        conn.execute(
            sa.text(_UPSERT),
            [
                {
                    "email": e,
                    "kind": kind,
                    "group_id": group_id,
                    "created": when,
                    "reason": reason,
                    "status": status,
                }
                for e in listed
            ],
        )
    return listed


# Both SQLite (3.24+) and PostgreSQL take this form.
_UPSERT = (
    "INSERT INTO suppressions (email, kind, group_id, created, reason, status) "
    "VALUES (:email, :kind, :group_id, :created, :reason, :status) "
    "ON CONFLICT (email, kind, group_id) DO UPDATE SET "
    "created = excluded.created, reason = excluded.reason, "
    "status = excluded.status"
)


def add_rows_sql(qmark: bool) -> str:
    """The upsert as positional SQL, for the delivery engine's DBAPI
    batch (``delivery/ledger.py``): (email, kind, group_id, created,
    reason, status)."""
    sql = _UPSERT
    for name in ("email", "kind", "group_id", "created", "reason", "status"):
        sql = sql.replace(f":{name}", "?" if qmark else "%s")
    return sql


def remove(
    conn: sa.Connection, kind: str, emails: Iterable[str], *, group_id: int = 0
) -> int:
    """Take *emails* off list *kind*; return how many were on it."""
    _check_kind(kind)
    listed = sorted({normalize(e) for e in emails})
    removed = 0
    for i in range(0, len(listed), _CHUNK):
        result = conn.execute(
            _S.delete().where(
                _S.c.kind == kind,
                _S.c.group_id == group_id,
                _S.c.email.in_(listed[i : i + _CHUNK]),
            )
        )
        removed += result.rowcount or 0
    return removed


def clear(conn: sa.Connection, kind: str, *, group_id: int = 0) -> int:
    """Empty list *kind*; return how many addresses it had."""
    _check_kind(kind)
    result = conn.execute(
        _S.delete().where(_S.c.kind == kind, _S.c.group_id == group_id)
    )
    return result.rowcount or 0


def entries(
    conn: sa.Connection,
    kind: str,
    *,
    group_id: int = 0,
    start: float | None = None,
    end: float | None = None,
    email: str | None = None,
    limit: int = 500,
    offset: int = 0,
) -> list[Entry]:
    """List *kind* (of group *group_id*), newest first."""
    _check_kind(kind)
    stmt = (
        sa.select(_S)
        .where(_S.c.kind == kind, _S.c.group_id == group_id)
        .order_by(_S.c.created.desc(), _S.c.email)
        .limit(limit)
        .offset(offset)
    )
    if start is not None:
        stmt = stmt.where(_S.c.created >= start)
    if end is not None:
        stmt = stmt.where(_S.c.created < end)
    if email is not None:
        stmt = stmt.where(_S.c.email == normalize(email))
    return [
        Entry(r.email, r.kind, r.group_id, r.created, r.reason, r.status)
        for r in conn.execute(stmt)
    ]


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown suppression list {kind!r}")


# -- groups -----------------------------------------------------------------


def create_group(
    conn: sa.Connection,
    name: str,
    description: str = "",
    is_default: bool = False,
    now: float | None = None,
) -> Group:
    """Make a group; sa.exc.IntegrityError if the name is taken."""
    when = time.time() if now is None else now
    if is_default:
        _clear_default(conn)
    result = conn.execute(
        _G.insert().values(
            name=name, description=description, is_default=is_default, created=when
        )
    )
    key = result.inserted_primary_key
    assert key is not None
    return Group(int(key[0]), name, description, is_default, when)


def groups(conn: sa.Connection) -> list[Group]:
    return [_group(r) for r in conn.execute(sa.select(_G).order_by(_G.c.id))]


def group(conn: sa.Connection, group_id: int) -> Group | None:
    found = conn.execute(sa.select(_G).where(_G.c.id == group_id)).first()
    return _group(found) if found is not None else None


def update_group(
    conn: sa.Connection,
    group_id: int,
    *,
    name: str | None = None,
    description: str | None = None,
    is_default: bool | None = None,
) -> Group | None:
    """Change what is given; None if there is no such group."""
    values: dict[str, object] = {}
    if name is not None:
        values["name"] = name
    if description is not None:
        values["description"] = description
    if is_default is not None:
        if is_default:
            _clear_default(conn)
        values["is_default"] = is_default
    if values:
        conn.execute(_G.update().where(_G.c.id == group_id).values(**values))
    return group(conn, group_id)


def delete_group(conn: sa.Connection, group_id: int) -> bool:
    """Delete a group and its unsubscribes; False if there was none."""
    result = conn.execute(_G.delete().where(_G.c.id == group_id))
    conn.execute(
        _S.delete().where(_S.c.kind == GROUP_UNSUBSCRIBE, _S.c.group_id == group_id)
    )
    return bool(result.rowcount)


def group_counts(conn: sa.Connection) -> dict[int, int]:
    """Unsubscribes per group."""
    rows = conn.execute(
        sa.select(_S.c.group_id, sa.func.count())
        .where(_S.c.kind == GROUP_UNSUBSCRIBE)
        .group_by(_S.c.group_id)
    )
    return {int(g): int(n) for g, n in rows}


def _clear_default(conn: sa.Connection) -> None:
    # SendGrid allows one default group.
    conn.execute(_G.update().where(_G.c.is_default).values(is_default=False))


def _group(r: Any) -> Group:
    return Group(
        int(r.id),
        str(r.name),
        str(r.description),
        bool(r.is_default),
        float(r.created),
    )

