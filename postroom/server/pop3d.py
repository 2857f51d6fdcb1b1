"""The POP3 service: listeners, connection limits and shutdown.

``Pop3Server`` owns every POP3 listening socket of a worker (``pop3``
with STLS, ``pop3s`` with TLS from the first byte, RFC 8314), counts
live sessions in total and per client address, and stops gracefully:
it stops listening, lets a session in the UPDATE state finish removing
its messages, and closes the rest with ``-ERR [SYS/TEMP]`` (nothing
marked for deletion is removed then, RFC 1939 §6). Sessions are in
``pop3_session.py``; the maildrop and its lock in ``pop3_maildrop.py``.

Listening, connection limits (each of ``workers`` processes gets its
share) and the graceful stop are those of
``listening.ListeningService``; the per-mailbox lock is what keeps two workers
from serving one maildrop at once.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from postroom.config import Config, Listener
from postroom.protocol.pop3 import responses
from postroom.protocol.pop3.responses import Response
from postroom.server.listening import ListeningService, Refusal
from postroom.server.pop3_session import Pop3Session

if TYPE_CHECKING:
    from postroom.mailbox.store import MailStore
    from postroom.server.auth import Authenticator


class Pop3Server(ListeningService[Pop3Session]):
    implicit_tls = frozenset({"pop3s"})

    def __init__(
        self,
        config: Config,
        store: MailStore,
        authenticator: Authenticator,
        *,
        tls_context: ssl.SSLContext | None = None,
        workers: int = 1,
    ) -> None:
        super().__init__(
            config,
            tls_context=tls_context,
            max_connections=config.pop3.max_connections,
            max_connections_per_ip=config.pop3.max_connections_per_ip,
            workers=workers,
        )
        self.store = store
        self.authenticator = authenticator

    def listeners(self) -> list[Listener]:
        return self.config.pop3.listeners

    def new_session(self, listener: Listener) -> Pop3Session:
        return Pop3Session(self, listener)

    def admit(self, session: Pop3Session) -> Response | None:
        """Count a new session in; None to serve it, else the refusal."""
        refusal = self.count_in(session)
        if refusal is None:
            return None
        if refusal is Refusal.STOPPING:
            return responses.SHUTTING_DOWN
        return responses.TOO_MANY_CONNECTIONS
