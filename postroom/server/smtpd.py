"""The SMTP service: listeners, connection limits and shutdown.

One ``SmtpServer`` owns every SMTP listening socket of a node, the
count of live sessions (in total and per client address, so one client
cannot take every slot), and the set of tasks sessions are waiting on.
Graceful shutdown (``stop``): stop listening, let each session finish
the transaction in flight, answer 421 to anything new, and after
``shutdown_grace`` seconds abort whatever is left. The mechanics are
``listening.ListeningService``'s, shared with POP3 and IMAP.
"""

from __future__ import annotations

import logging
import ssl
from typing import TYPE_CHECKING

from postroom import logs
from postroom.config import Config, Listener
from postroom.protocol.smtp import replies
from postroom.protocol.smtp.replies import Reply
from postroom.server.listening import ListeningService, Refusal
from postroom.server.policy import RelayPolicy
from postroom.server.session import SmtpSession

if TYPE_CHECKING:
    from postroom.mailauth.inbound import InboundAuth
    from postroom.mailbox.recipients import LocalRecipients
    from postroom.queue.spool import Spool
    from postroom.queue.store import QueueStore
    from postroom.server.auth import Authenticator

log = logging.getLogger(__name__)


class SmtpServer(ListeningService[SmtpSession]):
    implicit_tls = frozenset({"submissions"})

    def __init__(
        self,
        config: Config,
        spool: Spool,
        *,
        authenticator: Authenticator | None = None,
        tls_context: ssl.SSLContext | None = None,
        workers: int = 1,
        queue: QueueStore | None = None,
        recipients: LocalRecipients | None = None,
    ) -> None:
        super().__init__(
            config,
            tls_context=tls_context,
            max_connections=config.smtp.max_connections,
            max_connections_per_ip=config.smtp.max_connections_per_ip,
            workers=workers,
        )
        self.spool = spool
        # For ETRN: None when no delivery engine runs (458).
        self.queue = queue
        self.authenticator = authenticator
        # *recipients* knows local users, aliases and quotas; without
        # it every address of a local domain is accepted.
        self.policy = RelayPolicy(
            config.smtp.local_domains, config.smtp.trusted_networks, recipients
        )
        # SPF, DKIM and DMARC for strangers' mail at the relay listener
        # (postroom/mailauth/inbound.py); None when off.
        self.mailauth = _mailauth(config)

    def listeners(self) -> list[Listener]:
        return self.config.smtp.listeners

    def new_session(self, listener: Listener) -> SmtpSession:
        return SmtpSession(self, listener)

    def admit(self, session: SmtpSession) -> Reply | None:
        """Count a new session in; None to serve it, else the refusal."""
        refusal = self.count_in(session)
        if refusal is None:
            return None
        if refusal is Refusal.STOPPING:
            return replies.SHUTTING_DOWN
        return replies.TOO_MANY_CONNECTIONS

    async def stop(self) -> None:
        """Graceful shutdown; returns when every session is gone."""
        log.info(logs.event("stopping", sessions=len(self.sessions)))
        await super().stop()
        if self.mailauth is not None:
            self.mailauth.close()


def _mailauth(config: Config) -> InboundAuth | None:
    if not config.mailauth.enabled:
        return None
    # Imported only when used: pyspf and the Public Suffix List cost
    # start-up time that a node with the checks off should not pay.
    from postroom.mailauth.inbound import InboundAuth

    return InboundAuth.from_config(config)
