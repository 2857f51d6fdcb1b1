"""Aliases: an address that delivers to one or more other addresses.

One row per (alias, target) pair in ``aliases``. The alias is
``local@domain`` or ``@domain``, the catch-all of a domain (used only
when nothing else matches; ``postroom.mailbox.addressing`` has the
order). A target is any address: an account, another alias, or a remote
address to forward to. Both are stored lower-case, like accounts
(``users.normalize_address`` says why).

Like ``users``, functions take an open ``sa.Connection`` so several go
in one transaction.
"""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa

from postroom.errors import UserError
from postroom.store.db import metadata
from postroom.store.users import MAX_ADDRESS_LENGTH, normalize_address

aliases = sa.Table(
    "aliases",
    metadata,
    sa.Column("address", sa.String(MAX_ADDRESS_LENGTH), primary_key=True),
    sa.Column("target", sa.String(MAX_ADDRESS_LENGTH), primary_key=True),
)


# Built once: this runs at every RCPT to a local domain, and building a
# statement costs more than running it.
_TARGETS = (
    sa.select(aliases.c.address, aliases.c.target)
    .where(aliases.c.address.in_(sa.bindparam("keys", expanding=True)))
    .order_by(aliases.c.address, aliases.c.target)
)


def normalize_alias(text: str) -> str:
    """``local@domain`` or ``@domain`` (a catch-all), lower-cased.

    Raises UserError when it is neither.
    """
    text = text.strip()
    if text.startswith("@"):
        # Checked as an address with a stand-in local part.
        return "@" + normalize_address("x" + text).partition("@")[2]
    return normalize_address(text)


def add(conn: sa.Connection, address: str, targets: Iterable[str]) -> None:
    """Make *address* deliver to each of *targets* (added to any it has).

    Raises UserError for a malformed address or target, or when the
    alias already has one of the targets.
    """
    address = normalize_alias(address)
    wanted = [normalize_address(t) for t in targets]
    if not wanted:
        raise UserError("an alias needs at least one target")
    for target in wanted:
        try:
            with conn.begin_nested():
                conn.execute(aliases.insert().values(address=address, target=target))
        except sa.exc.IntegrityError:
            raise UserError(f"alias exists: {address} -> {target}") from None


def delete(conn: sa.Connection, address: str, targets: Iterable[str] = ()) -> None:
    """Remove *targets* from alias *address*, or the whole alias when
    none are named. Raises UserError when nothing matched."""
    address = normalize_alias(address)
    query = aliases.delete().where(aliases.c.address == address)
    chosen = [normalize_address(t) for t in targets]
    if chosen:
        query = query.where(aliases.c.target.in_(chosen))
    if conn.execute(query).rowcount == 0:
        raise UserError(f"no such alias: {address}")


def targets(conn: sa.Connection, addresses: Iterable[str]) -> dict[str, list[str]]:
    """address -> its targets, for those of *addresses* that are aliases
    (already normalized, as ``addressing`` passes them)."""
    keys = list(addresses)
    found: dict[str, list[str]] = {}
    if not keys:
        return found
    for address, target in conn.execute(_TARGETS, {"keys": keys}):
        found.setdefault(address, []).append(target)
    return found


def list_all(conn: sa.Connection) -> list[tuple[str, list[str]]]:
    """Every alias with its targets, ordered by alias."""
    query = sa.select(aliases.c.address, aliases.c.target).order_by(
        aliases.c.address, aliases.c.target
    )
    found: dict[str, list[str]] = {}
    for address, target in conn.execute(query):
        found.setdefault(address, []).append(target)
    return list(found.items())
