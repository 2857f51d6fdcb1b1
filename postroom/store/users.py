"""Accounts: who may log in, and with which password.

One row per account in ``users``, keyed by the account's address in
lower case; the address is also the login name. The table holds only
what authentication needs, plus the account's quota: ``quota`` is a
limit in bytes on everything stored in the account's folders, NULL for
"the configured default" (``mailbox.default_quota``) and 0 for no limit.
Aliases live in ``store/aliases.py``; mail itself in the Maildirs
(``postroom.mailbox``).

Functions here take an open ``sa.Connection`` so that a caller can put
several of them in one transaction (``with engine.begin() as conn``).
They store whatever password hash they are given: hashing is the job of
``postroom.server.passwords``, and no plaintext password reaches this
module.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from dataclasses import dataclass

import sqlalchemy as sa

from postroom.errors import UnknownUser, UserError, UserExists
from postroom.store.db import metadata

# RFC 5321 §4.5.3.1.3 limits a path to 256 octets including the angle
# brackets, so an address has at most 254.
MAX_ADDRESS_LENGTH = 254

users = sa.Table(
    "users",
    metadata,
    sa.Column("address", sa.String(MAX_ADDRESS_LENGTH), primary_key=True),
    sa.Column("password_hash", sa.String(255), nullable=False),
    # Stored in UTC. SQLite keeps no zone, so reads re-attach UTC.
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column(
        "disabled", sa.Boolean, nullable=False, default=False, server_default=sa.false()
    ),
    sa.Column("quota", sa.BigInteger, nullable=True),
)


@dataclass(frozen=True)
class User:
    """One account as stored. ``created_at`` is timezone-aware UTC."""

    address: str
    password_hash: str
    created_at: dt.datetime
    disabled: bool
    quota: int | None = None


def normalize_address(text: str) -> str:
    """Return *text* as an account address: stripped, lower-cased, NFC.

    The check is deliberately loose, ``local@domain`` with both parts
    non-empty and no space, control character or angle bracket, because
    accounts are created by an administrator, not by a peer.

    Lower-casing the local part goes beyond RFC 5321 §2.4, which lets a
    receiving host treat it as case-sensitive; every mainstream server
    folds it, and users expect ``Alice@`` and ``alice@`` to be one
    account.

    Raises UserError naming the address when it does not look like one.
    """
    # NFC after lowering, as mailbox.names does for the directory: two
    # spellings of "josé" (composed, or e + U+0301) must be one account,
    # not two accounts sharing one Maildir.
    address = unicodedata.normalize("NFC", text.strip().lower())
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise UserError(f"not an address (expected local@domain): {text!r}")
    if len(address) > MAX_ADDRESS_LENGTH:
        raise UserError(
            f"address longer than {MAX_ADDRESS_LENGTH} characters: {text!r}"
        )
    if any(c.isspace() or not c.isprintable() or c in "<>" for c in address):
        raise UserError(f"address contains a forbidden character: {text!r}")
    # XXX: an internationalised domain is stored as typed (U-labels), not
    # converted to its xn-- A-label form, because nothing yet matches
    # accounts against SMTPUTF8 recipients; that matching will decide
    # which form is canonical.
    return address


def add(
    conn: sa.Connection,
    address: str,
    password_hash: str,
    *,
    quota: int | None = None,
) -> User:
    """Create the account *address* with *password_hash* and *quota*
    (bytes; None for the configured default, 0 for no limit).

    Raises UserError for a malformed address and UserExists when the
    account is already there. After UserExists the caller's transaction
    must be rolled back (PostgreSQL aborts it on the failed insert).
    """
    address = normalize_address(address)
    created = dt.datetime.now(dt.UTC).replace(microsecond=0)
    # No SELECT first: the primary key decides, which also settles two
    # concurrent adds of one address.
    try:
        conn.execute(
            users.insert().values(
                address=address,
                password_hash=password_hash,
                created_at=created,
                disabled=False,
                quota=quota,
            )
        )
    except sa.exc.IntegrityError:
        raise UserExists(f"user already exists: {address}") from None
    return User(address, password_hash, created, False, quota)


def get(conn: sa.Connection, address: str) -> User | None:
    """The account *address*, or None if there is none (or it is malformed)."""
    try:
        address = normalize_address(address)
    except UserError:
        return None
    row = conn.execute(sa.select(users).where(users.c.address == address)).one_or_none()
    return None if row is None else _user(row)


def get_many(conn: sa.Connection, addresses: list[str]) -> list[User]:
    """The accounts among *addresses* (already normalized), in one query."""
    if not addresses:
        return []
    return [_user(row) for row in conn.execute(_GET_MANY, {"keys": addresses})]


# Built once: get_many runs at every RCPT to a local domain.
_GET_MANY = sa.select(users).where(
    users.c.address.in_(sa.bindparam("keys", expanding=True))
)


def list_all(conn: sa.Connection) -> list[User]:
    """Every account, ordered by address."""
    rows = conn.execute(sa.select(users).order_by(users.c.address))
    return [_user(row) for row in rows]


def set_password(conn: sa.Connection, address: str, password_hash: str) -> None:
    """Replace the password hash of *address*; raise UnknownUser if none."""
    _update(conn, address, password_hash=password_hash)


def set_disabled(conn: sa.Connection, address: str, disabled: bool) -> None:
    """Disable or re-enable *address*; raise UnknownUser if none."""
    _update(conn, address, disabled=disabled)


def set_quota(conn: sa.Connection, address: str, quota: int | None) -> None:
    """Set the quota of *address* in bytes (None: the default, 0: no
    limit); raise UnknownUser if none."""
    _update(conn, address, quota=quota)


def delete(conn: sa.Connection, address: str) -> None:
    """Remove the account *address*; raise UnknownUser if none."""
    address = normalize_address(address)
    result = conn.execute(users.delete().where(users.c.address == address))
    if result.rowcount == 0:
        raise UnknownUser(f"no such user: {address}")


def _update(conn: sa.Connection, address: str, **values: object) -> None:
    address = normalize_address(address)
    result = conn.execute(
        users.update().where(users.c.address == address).values(**values)
    )
    if result.rowcount == 0:
        raise UnknownUser(f"no such user: {address}")


def _user(row: sa.Row[tuple[object, ...]]) -> User:
    created: dt.datetime = row.created_at
    if created.tzinfo is None:
        created = created.replace(tzinfo=dt.UTC)
    return User(row.address, row.password_hash, created, bool(row.disabled), row.quota)
