"""IMAP logins: who may log in, how failures are slowed down.

``LoginGate`` decides one connection's LOGIN and AUTHENTICATE attempts
(the core has already parsed them and refused them before TLS unless
``plaintext_allowed``). It never touches the core or the transport: it
returns what the session should do (``Verdict``), so the session stays
the only place where bytes move.

Policy, as for SMTP AUTH and POP3 (``server/auth.py`` checks the
scrypt hash in a thread):

* An authorization identity other than the user (SASL PLAIN's authzid)
  is refused: there are no administrators who may act as someone else.
* Each failure waits ``imap.auth_failure_delay`` seconds, doubled with
  every further failure on the connection, before the NO; after
  ``imap.auth_max_failures`` the session ends.
* A good password opens the user's mail (``ImapMailboxes.open`` makes
  the Maildir and default folders on first use).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from postroom import logs
from postroom.config import ImapConfig
from postroom.errors import AuthError, MailboxError
from postroom.protocol.imap import events as ev
from postroom.server.imap_mailbox import ImapMailboxes
from postroom.store import users

if TYPE_CHECKING:
    from postroom.mailbox.store import MailStore
    from postroom.server.auth import Authenticator

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer for the core; the user's mail when logged in; whether
    the session must end (too many failures)."""

    answer: ev.Done | ev.Refused
    mailboxes: ImapMailboxes | None = None
    hang_up: bool = False


class LoginGate:
    def __init__(
        self,
        config: ImapConfig,
        authenticator: Authenticator,
        store: MailStore,
        peer: str,
    ) -> None:
        self.config = config
        self.authenticator = authenticator
        self.store = store
        self.peer = peer
        self.failures = 0

    async def check(self, event: ev.Login) -> Verdict:
        """Decide *event*; waits for the password check (and, after a
        failure, for the slow-down)."""
        if event.authzid and event.authzid != event.username:
            self._log(event, "failed", reason="authzid")
            return Verdict(ev.Refused("Not authorized", "AUTHORIZATIONFAILED"))
        try:
            good = await self.authenticator.verify(event.username, event.password)
        except AuthError as e:
            self._log(event, "error", error=str(e))
            return Verdict(ev.Refused("Try again later", "UNAVAILABLE"))
        if not good:
            return await self._failed(event)

        user = users.normalize_address(event.username)
        mailboxes = ImapMailboxes(self.store, user)
        try:
            await asyncio.to_thread(mailboxes.open)
        except (OSError, MailboxError) as e:
            self._log(event, "error", error=type(e).__name__)
            return Verdict(ev.Refused("Mailbox unavailable", "UNAVAILABLE"))
        self._log(event, "ok")
        return Verdict(ev.Done(), mailboxes)

    async def _failed(self, event: ev.Login) -> Verdict:
        self.failures += 1
        self._log(event, "failed", failures=self.failures)
        # Slow down guessing as SMTP AUTH and POP3 do: 1 s, 2 s, 4 s ...
        await asyncio.sleep(self.config.auth_failure_delay * 2 ** (self.failures - 1))
        return Verdict(
            ev.Refused("Authentication failed", "AUTHENTICATIONFAILED"),
            hang_up=self.failures >= self.config.auth_max_failures,
        )

    def _log(self, event: ev.Login, result: str, **fields: Any) -> None:
        level = logging.WARNING if result in ("failed", "error") else logging.INFO
        log.log(
            level,
            logs.event(
                "auth",
                client=self.peer,
                user=event.username,
                mechanism=event.mechanism,
                result=result,
                **fields,
            ),
        )


def plaintext_allowed(config: ImapConfig, client_ip: str) -> bool:
    """Whether LOGIN may be used without TLS by a client at *client_ip*:
    if configured, or on loopback where the password never crosses a
    network (``loopback_is_secure``, Dovecot's habit)."""
    if config.allow_plaintext_auth:
        return True
    if not config.loopback_is_secure:
        return False
    try:
        return ipaddress.ip_address(client_ip).is_loopback
    except ValueError:
        return False
