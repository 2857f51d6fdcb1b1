"""From a recipient address to mailboxes and forward addresses.

Theory of operation
-------------------

``Resolver.resolve(address)`` answers for an address of a local domain
(an address elsewhere resolves to itself, as a forward). The first rule
that matches wins:

1. An alias for the whole address: its targets, each resolved in turn
   (an alias may name accounts, other aliases, remote addresses).
2. An account with that address: its mailbox.
3. With a sub-address (``alice+tag``, the delimiters configurable),
   rules 1 and 2 again for the address without the tag.
4. ``postmaster`` (RFC 5321 §4.5.1 requires it to exist in every
   domain we accept mail for): ``mailbox.postmaster`` if set, else the
   mailbox of ``postmaster@<domain>``, which exists on disk and becomes
   readable once that account is added.
5. The domain's catch-all alias ``@domain``.
6. Nothing: the address is unknown (550 5.1.1 at RCPT).

A target seen twice is used once (so ``sales -> bob, carol`` plus a
second RCPT for bob gives bob one copy per RCPT, not per path), an alias
naming itself means its own account (``alice -> alice, alice@remote``
keeps a copy), and expansion stops at ``MAX_DEPTH`` levels, since
aliases are data an administrator may get wrong.

Where forwards happen: at queue time. The SMTP session (and the engine
for its notices) calls ``expand`` on the recipients before the message
is stored, so the queue holds final recipients: each account once, and
each remote target as a recipient of its own that the delivery engine
relays like any other (with its own retries, DSNs and ORCPT naming the
address the sender used). Local delivery therefore only writes to
mailboxes; a forward it finds (an alias changed after the message was
queued) is logged and not followed.

Lookups go to the database every time (two indexed SELECTs), so a
``postroom user add`` or ``alias add`` in another process counts at the
next RCPT without any signalling.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field

import idna
import sqlalchemy as sa

from postroom.errors import BadMailboxName
from postroom.mailbox import names
from postroom.store import aliases, users

MAX_DEPTH = 8
POSTMASTER = "postmaster"


@dataclass(frozen=True, slots=True)
class Resolution:
    """Where mail for one address goes: account addresses whose
    mailboxes get a copy, and addresses elsewhere to forward it to.
    ``quotas`` holds each account's stored quota (None: the default),
    read in the same queries, so checking them costs no more."""

    mailboxes: tuple[str, ...] = ()
    forwards: tuple[str, ...] = ()
    quotas: dict[str, int | None] = field(default_factory=dict, compare=False)


@dataclass
class _Walk:
    mailboxes: list[str] = field(default_factory=list)
    forwards: list[str] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)


class Resolver:
    """Resolves addresses against the ``users`` and ``aliases`` tables
    of *engine* for the *local_domains*. Blocking (database); callers
    on the event loop use it directly, since a lookup costs about as
    much as parsing the command that asked for it."""

    def __init__(
        self,
        engine: sa.Engine,
        local_domains: Iterable[str],
        *,
        delimiters: str = "+",
        postmaster: str = "",
        hostname: str = "localhost",
    ) -> None:
        self.engine = engine
        self.local_domains = frozenset(_domain_key(d) for d in local_domains)
        self.delimiters = delimiters
        self.postmaster = postmaster.lower()
        self.hostname = hostname.lower()
        # Where a bare "postmaster" (RFC 5321 §4.5.1) lives: our host
        # name if we receive for it, else the first local domain.
        local = [_domain_key(d) for d in local_domains]
        self.postmaster_domain = (
            self.hostname if self.hostname in local or not local else local[0]
        )

    def is_local(self, address: str) -> bool:
        """True for an address of a local domain, and for a bare
        ``postmaster``."""
        _local, at, domain = address.rpartition("@")
        return not at or _domain_key(domain) in self.local_domains

    def resolve(self, address: str) -> Resolution | None:
        """Where mail to *address* goes, or None for an unknown local
        address. ``postmaster`` without a domain is taken as
        ``postmaster@`` our host name, or the first local domain when
        the host name is not one."""
        if "@" not in address:
            address = f"{address}@{self.postmaster_domain}"
        walk = _Walk()
        with self.engine.connect() as conn:
            tables = _Tables(conn)
            if not self._walk(tables, address, walk, depth=0):
                return None
        if not walk.mailboxes and not walk.forwards:
            return None
        quotas = {
            a: u.quota for a in walk.mailboxes if (u := tables.account(a)) is not None
        }
        return Resolution(tuple(walk.mailboxes), tuple(walk.forwards), quotas)

    # -- the rules ---------------------------------------------------------

    def _walk(self, tables: _Tables, address: str, walk: _Walk, depth: int) -> bool:
        key = canonical(address)
        if key is None:
            return False
        local, _at, domain = key.rpartition("@")
        if not self.is_local(key) and domain != self.postmaster_domain:
            _add(walk.forwards, address.lower(), walk)
            return True
        base = _strip_tag(local, self.delimiters)
        # Every row the rules below may need, in two queries.
        tables.prefetch([key, f"{base}@{domain}", f"@{domain}"])
        if key in walk.seen or depth >= MAX_DEPTH:
            # A loop back to an address we are expanding: its own account
            # if there is one, never its aliases again.
            return self._own_account(tables, key, walk)
        walk.seen.add(key)

        candidates = [key] if base == local else [key, f"{base}@{domain}"]
        for candidate in candidates:
            if self._direct(tables, candidate, walk, depth):
                return True

        if base == POSTMASTER:
            target = self.postmaster or f"{POSTMASTER}@{domain}"
            if target == f"{POSTMASTER}@{domain}":
                _add(walk.mailboxes, target, walk)
                return True
            return self._walk(tables, target, walk, depth + 1)

        catchall = tables.alias(f"@{domain}")
        if catchall:
            return self._follow(tables, catchall, walk, depth)
        return False

    def _direct(self, tables: _Tables, key: str, walk: _Walk, depth: int) -> bool:
        targets = tables.alias(key)
        if targets:
            return self._follow(tables, targets, walk, depth, own=key)
        # A disabled account cannot log in but still receives mail, as
        # a mailbox kept for a person on leave should.
        return self._own_account(tables, key, walk)

    def _own_account(self, tables: _Tables, key: str, walk: _Walk) -> bool:
        account = tables.account(key)
        if account is None:
            return False
        _add(walk.mailboxes, account.address, walk)
        return True

    def _follow(
        self,
        tables: _Tables,
        targets: list[str],
        walk: _Walk,
        depth: int,
        own: str | None = None,
    ) -> bool:
        any_found = False
        for target in targets:
            if own is not None and canonical(target) == own:
                # An alias naming itself keeps a copy in its own account.
                any_found |= self._own_account(tables, own, walk)
                continue
            any_found |= self._walk(tables, target, walk, depth + 1)
        return any_found


class _Tables:
    """The rows of ``users`` and ``aliases`` one resolve needs, fetched
    a batch at a time (a query costs far more than the rules)."""

    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn
        self.asked: set[str] = set()
        self.aliases: dict[str, list[str]] = {}
        self.users: dict[str, users.User] = {}

    def prefetch(self, keys: list[str]) -> None:
        forms = [f for key in keys for f in _forms(key) if f not in self.asked]
        if not forms:
            return
        self.asked.update(forms)
        self.aliases.update(aliases.targets(self.conn, forms))
        accounts = [f for f in forms if not f.startswith("@")]
        for user in users.get_many(self.conn, accounts):
            self.users[user.address] = user

    def alias(self, key: str) -> list[str] | None:
        self.prefetch([key])
        for form in _forms(key):
            if form in self.aliases:
                return self.aliases[form]
        return None

    def account(self, key: str) -> users.User | None:
        self.prefetch([key])
        for form in _forms(key):
            if form in self.users:
                return self.users[form]
        return None


def canonical(address: str) -> str | None:
    """``Local@Domain`` -> ``local@domain`` as accounts are stored
    (quotes removed, lower-case NFC local part, lower-case domain), or
    None when the local part is unusable as a mailbox name. The domain
    keeps the form it came in; ``_forms`` adds the other one."""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return None
    if local.startswith('"') and local.endswith('"') and len(local) > 1:
        local = local[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    try:
        names.local_name(local)
    except BadMailboxName:
        return None
    local = unicodedata.normalize("NFC", local.lower())
    return f"{local}@{domain.lower().rstrip('.')}"


def _domain_key(domain: str) -> str:
    try:
        return names.domain_name(domain)
    except BadMailboxName:
        return domain.lower()


def _strip_tag(local: str, delimiters: str) -> str:
    cut = min((i for i, c in enumerate(local) if c in delimiters), default=-1)
    return local[:cut] if cut > 0 else local


def _add(target: list[str], address: str, walk: _Walk) -> None:
    if address not in walk.mailboxes and address not in walk.forwards:
        target.append(address)


def _forms(key: str) -> list[str]:
    # Accounts and aliases are stored with the domain as the
    # administrator typed it (store/users.py), U-labels or A-labels,
    # while mail may use either: look up both.
    local, _at, domain = key.rpartition("@")  # local "" for a catch-all
    try:
        if domain.isascii():
            other = idna.decode(domain) if "xn--" in domain else domain
        else:
            other = idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError:
        return [key]
    return [key] if other == domain else [key, f"{local}@{other}"]
