"""Local recipients as the SMTP server and the queue see them.

``LocalRecipients`` joins the resolver (who gets mail for an address)
with the store (how much each mailbox holds) and the quotas, and gives
the three answers the SMTP side needs:

- ``check_rcpt`` at RCPT: 550 5.1.1 for an unknown address of a local
  domain (RFC 3463 "bad destination mailbox address"), 452 4.2.2 when a
  mailbox it delivers to is already full (RFC 5321 §4.5.3.1.10 lets a
  server refuse a recipient with 452 for lack of storage; the client
  retries later).
- ``check_message`` at end of data: 452 4.2.2 when *every* recipient
  is local and this message would take each of them over quota. With
  some recipients that fit, the message is accepted and local delivery
  defers the overfull ones (4.2.2, retried until the queue's expiry):
  one full mailbox must not hold mail up for everybody else, and SMTP
  has one reply per message, not per recipient (LMTP would differ).
- ``expand`` at queue time: aliases become their targets (see
  ``addressing``).

Usage is read from the Maildirs (``quota``); counting costs a stat per
folder directory when nothing changed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

import sqlalchemy as sa

from postroom import logs
from postroom.errors import BadMailboxName
from postroom.mailbox.addressing import Resolution, Resolver
from postroom.mailbox.store import MailStore
from postroom.protocol.smtp.replies import Reply
from postroom.queue.envelope import Recipient
from postroom.store import users

if TYPE_CHECKING:
    from postroom.config import Config

log = logging.getLogger(__name__)


UNKNOWN_USER = Reply.of(550, "5.1.1", "Recipient address rejected: unknown user")
MAILBOX_FULL = Reply.of(452, "4.2.2", "Mailbox full, try again later")
# The user database did not answer: try again later (RFC 3463 4.3.0).
LOOKUP_FAILED = Reply.of(451, "4.3.0", "Temporary lookup failure")


class LocalRecipients:
    """See the module docstring. *default_quota* is bytes (0: none)."""

    def __init__(
        self, resolver: Resolver, store: MailStore, *, default_quota: int = 0
    ) -> None:
        self.resolver = resolver
        self.store = store
        self.default_quota = default_quota

    @classmethod
    def from_config(cls, config: Config, engine: sa.Engine) -> LocalRecipients:
        """The node's local recipients: domains, delimiters, postmaster
        and default quota from *config*, accounts and aliases from
        *engine*'s tables."""
        resolver = Resolver(
            engine,
            config.smtp.local_domains,
            delimiters=config.mailbox.subaddress_delimiter,
            postmaster=config.mailbox.postmaster,
            hostname=config.hostname,
        )
        store = MailStore(config.mailbox_dir, fsync=config.queue.fsync)
        recipients = cls(resolver, store, default_quota=config.mailbox.default_quota)
        store.quota_of = recipients.quota_of
        return recipients

    # -- answers -------------------------------------------------------------

    def check_rcpt(self, address: str) -> Reply | None:
        """None to accept *address* (of a local domain) at RCPT."""
        try:
            return self._check_rcpt(address)
        except sa.exc.SQLAlchemyError as e:
            log.error(logs.event("rejected", to=address, reason=f"lookup: {e}"))
            return LOOKUP_FAILED

    def _check_rcpt(self, address: str) -> Reply | None:
        resolution = self.resolver.resolve(address)
        if resolution is None:
            return UNKNOWN_USER
        if any(self._over(u, 0, resolution) for u in resolution.mailboxes):
            return MAILBOX_FULL
        return None

    def check_message(self, addresses: Iterable[str], size: int) -> Reply | None:
        """None to accept a message of *size* bytes for *addresses*."""
        try:
            return self._check_message(addresses, size)
        except sa.exc.SQLAlchemyError as e:
            log.error(logs.event("rejected", reason=f"lookup: {e}"))
            return LOOKUP_FAILED

    def _check_message(self, addresses: Iterable[str], size: int) -> Reply | None:
        full = True
        for address in addresses:
            if not self.resolver.is_local(address):
                return None
            resolution = self.resolver.resolve(address)
            if resolution is None or resolution.forwards:
                return None
            if not all(self._over(u, size, resolution) for u in resolution.mailboxes):
                full = False
        return MAILBOX_FULL if full else None

    def expand(self, recipients: Iterable[Recipient]) -> list[Recipient]:
        """The queue's recipients for the RCPTs *recipients*.

        An address that resolves to one mailbox and nothing else (an
        account, or its sub-address) stays as it is, so Delivered-To
        keeps the tag. Anything else (an alias) is replaced by its
        targets, one recipient each, so each is delivered, deferred and
        reported on its own; the replacements' ORCPT (RFC 3461 §4.2)
        names the address the sender used, unless the sender gave one.
        A mailbox or forward address reached twice gets one copy. A bare
        ``postmaster`` is always replaced, since it names no domain to
        route by.

        If the database fails now (it answered at RCPT a moment ago),
        the recipients are queued as given: local delivery resolves
        them again and writes every local copy, and only forwards are
        lost, with a log line; refusing a message we already checked
        would be worse.
        """
        recipients = list(recipients)
        try:
            return self._expand(recipients)
        except sa.exc.SQLAlchemyError as e:
            log.error(logs.event("rejected", reason=f"alias expansion: {e}"))
            return recipients

    def _expand(self, recipients: list[Recipient]) -> list[Recipient]:
        out: list[Recipient] = []
        seen: set[str] = set()
        for rcpt in recipients:
            resolution = None
            if self.resolver.is_local(rcpt.address):
                resolution = self.resolver.resolve(rcpt.address)
            if resolution is None or (
                len(resolution.mailboxes) == 1
                and not resolution.forwards
                and "@" in rcpt.address
            ):
                key = resolution.mailboxes[0] if resolution else rcpt.address.lower()
                if key not in seen:
                    seen.add(key)
                    out.append(rcpt)
                continue
            orcpt = rcpt.orcpt or f"rfc822;{rcpt.address}"
            for target in [*resolution.mailboxes, *resolution.forwards]:
                if target.lower() not in seen:
                    seen.add(target.lower())
                    out.append(Recipient(target, rcpt.notify, orcpt))
        return out

    # -- quotas --------------------------------------------------------------

    def quota_of(self, user: str) -> int | None:
        """*user*'s limit in bytes, or None for no limit."""
        with self.resolver.engine.connect() as conn:
            account = users.get(conn, user)
        return self._limit(None if account is None else account.quota)

    def over_quota(self, user: str, extra: int) -> bool:
        """True when *extra* more bytes would not fit *user*'s quota (a
        full mailbox is over quota even for 0 more bytes)."""
        return self._exceeds(user, extra, self.quota_of(user))

    def _over(self, user: str, extra: int, resolution: Resolution) -> bool:
        # The quota came with the resolution: no second query.
        return self._exceeds(user, extra, self._limit(resolution.quotas.get(user)))

    def _limit(self, stored: int | None) -> int | None:
        limit = self.default_quota if stored is None else stored
        return limit or None

    def _exceeds(self, user: str, extra: int, limit: int | None) -> bool:
        if limit is None:
            return False
        try:
            used = self.store.usage(user)
        except BadMailboxName:
            return False
        return used + extra > limit or used >= limit
