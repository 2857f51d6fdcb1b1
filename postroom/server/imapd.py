"""The IMAP service: listeners, connection limits and shutdown.

``ImapServer`` owns every IMAP listening socket of a worker (``imap``
with STARTTLS, ``imaps`` with TLS from the first byte, RFC 8314), counts
live sessions in total and per client address, and stops gracefully: it
stops listening, lets a command that is being answered finish (an
APPEND or a MOVE is never cut in half), and says ``* BYE`` to every
session (RFC 3501 §7.1.5). Sessions are in ``imap_session.py``; what
they ask of the mailbox store, in ``imap_mailbox.py``.

Listening, connection limits and the graceful stop are those of
``listening.ListeningService``. IMAP takes no lock on a mailbox:
sessions in any worker, and the delivery process, change it at once,
and each session learns of the others' changes from the mailbox index.
Quotas hold for APPEND and COPY through the ``MailStore`` given, which
knows each account's limit (``cli/serve.py`` passes SMTP's); over it,
``imap_mailbox`` answers NO [OVERQUOTA].
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from postroom.config import Config, Listener
from postroom.server.imap_session import ImapSession
from postroom.server.listening import ListeningService, Refusal

if TYPE_CHECKING:
    from postroom.mailbox.store import MailStore
    from postroom.server.auth import Authenticator


class ImapServer(ListeningService[ImapSession]):
    implicit_tls = frozenset({"imaps"})

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
            max_connections=config.imap.max_connections,
            max_connections_per_ip=config.imap.max_connections_per_ip,
            workers=workers,
        )
        self.store = store
        self.authenticator = authenticator

    def listeners(self) -> list[Listener]:
        return self.config.imap.listeners

    def new_session(self, listener: Listener) -> ImapSession:
        return ImapSession(self, listener)

    def admit(self, session: ImapSession) -> str | None:
        """Count a new session in; None to serve it, else why not."""
        refusal = self.count_in(session)
        if refusal is None:
            return None
        return _REFUSALS[refusal]


_REFUSALS = {
    Refusal.STOPPING: "Server shutting down",
    Refusal.TOO_MANY: "Too many connections",
    Refusal.TOO_MANY_FROM_ADDRESS: "Too many connections from your address",
}
