"""The SMTP service: listeners, connection limits and shutdown.

One ``SmtpServer`` owns every SMTP listening socket of a node, the
count of live sessions (in total and per client address, so one client
cannot take every slot), and the set of tasks sessions are waiting on.
Graceful shutdown (``stop``): stop listening, let each session finish
the transaction in flight, answer 421 to anything new, and after
``shutdown_grace`` seconds abort whatever is left.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections import Counter
from typing import TYPE_CHECKING

from postroom import logs
from postroom.config import Config, Listener
from postroom.protocol.smtp import replies
from postroom.protocol.smtp.replies import Reply
from postroom.server.policy import RelayPolicy
from postroom.server.session import SmtpSession

if TYPE_CHECKING:
    from postroom.queue.spool import Spool
    from postroom.queue.store import QueueStore
    from postroom.server.auth import Authenticator

log = logging.getLogger(__name__)


class SmtpServer:
    def __init__(
        self,
        config: Config,
        spool: Spool,
        *,
        authenticator: Authenticator | None = None,
        tls_context: ssl.SSLContext | None = None,
        workers: int = 1,
        queue: QueueStore | None = None,
    ) -> None:
        self.config = config
        self.spool = spool
        # For ETRN: None when no delivery engine runs (458).
        self.queue = queue
        self.authenticator = authenticator
        self.tls_context = tls_context
        self.policy = RelayPolicy(
            config.smtp.local_domains, config.smtp.trusted_networks
        )
        # Each of *workers* processes counts only its own sessions, so
        # each gets its share of the node's connection limits.
        self.max_connections = -(-config.smtp.max_connections // workers)
        self.max_per_ip = -(-config.smtp.max_connections_per_ip // workers)
        self.sessions: set[SmtpSession] = set()
        self.per_ip: Counter[str] = Counter()
        self.tasks: set[asyncio.Task[None]] = set()
        self._servers: list[asyncio.Server] = []
        self._stopping = False

    async def start(self, sockets: dict[str, socket.socket] | None = None) -> None:
        """Serve every configured listener.

        *sockets* maps listener names to sockets already bound and
        listening (the supervisor binds them once for all workers);
        without it each listener is bound here. Raises OSError if an
        address cannot be had.
        """
        loop = asyncio.get_running_loop()
        for listener in self.config.smtp.listeners:
            context = None
            if listener.kind == "submissions":
                if self.tls_context is None:
                    log.warning("listener %s needs TLS; skipped", listener.name)
                    continue
                context = self.tls_context

            def factory(listener: Listener = listener) -> SmtpSession:
                return SmtpSession(self, listener)

            sock = (sockets or {}).get(listener.name)
            if sock is not None:
                server = await loop.create_server(
                    factory, sock=sock, ssl=context, backlog=1024
                )
            else:
                server = await loop.create_server(
                    factory,
                    listener.host,
                    listener.port,
                    ssl=context,
                    backlog=1024,
                    reuse_address=True,
                )
            self._servers.append(server)
            log.info(
                logs.event(
                    "listening",
                    listener=listener.name,
                    address=f"{listener.host}:{listener.port}",
                )
            )

    def admit(self, session: SmtpSession) -> Reply | None:
        """Count a new session in; None to serve it, else the refusal."""
        self.sessions.add(session)
        self.per_ip[session.client_ip] += 1
        if self._stopping:
            return replies.SHUTTING_DOWN
        if len(self.sessions) > self.max_connections:
            return replies.TOO_MANY_CONNECTIONS
        if self.per_ip[session.client_ip] > self.max_per_ip:
            return replies.TOO_MANY_CONNECTIONS
        return None

    def release(self, session: SmtpSession) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            self.per_ip[session.client_ip] -= 1
            if self.per_ip[session.client_ip] <= 0:
                del self.per_ip[session.client_ip]

    @property
    def bound_ports(self) -> list[int]:
        """The ports actually bound (useful when a listener asked for 0)."""
        return [s.sockets[0].getsockname()[1] for s in self._servers if s.sockets]

    async def stop(self) -> None:
        """Graceful shutdown; returns when every session is gone."""
        self._stopping = True
        log.info(logs.event("stopping", sessions=len(self.sessions)))
        for server in self._servers:
            server.close()
        for session in list(self.sessions):
            session.begin_shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.smtp.shutdown_grace
        while self.sessions and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for session in list(self.sessions):
            if session.transport is not None:
                session.transport.abort()
        for server in self._servers:
            await server.wait_closed()
