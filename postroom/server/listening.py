"""What the listening services of a worker share: SMTP (``smtpd``), POP3
(``pop3d``) and IMAP (``imapd``).

A service owns its listening sockets, the live sessions (counted in
total and per client address, so that one client cannot take every
slot) and the tasks sessions are waiting on; it stops gracefully. The
three protocols differ only in which listeners are theirs, which kinds
speak TLS from the first byte, the session class, and how a refused
connection is told (``421 4.7.0``, ``-ERR [SYS/TEMP]``, ``* BYE``): a
subclass says those, and this class does the rest.

Connection limits: each of ``workers`` processes counts only its own
sessions, so each gets its share of the node's limits (rounded up).

Graceful stop (``stop``): stop listening; ask every session to finish
what it is doing (``begin_shutdown``: the transaction, the POP3 UPDATE,
the IMAP command in flight) and to refuse anything new; after
``smtp.shutdown_grace`` seconds abort whatever is left.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import socket
import ssl
from collections import Counter
from typing import Generic, Protocol, TypeVar

from postroom import logs
from postroom.config import Config, Listener

log = logging.getLogger(__name__)


class Session(Protocol):
    """What a service needs of its sessions."""

    client_ip: str
    transport: asyncio.Transport | None

    def begin_shutdown(self) -> None: ...


S = TypeVar("S", bound=Session)


class Refusal(enum.Enum):
    """Why a new session is not served."""

    STOPPING = enum.auto()
    TOO_MANY = enum.auto()  # the worker's share of max_connections
    TOO_MANY_FROM_ADDRESS = enum.auto()  # ... of max_connections_per_ip


class ListeningService(Generic[S]):
    """The listeners of one protocol in one worker; see the module
    docstring. Subclasses implement ``listeners`` and ``new_session``
    and set ``implicit_tls``."""

    #: Listener kinds that speak TLS from the first byte (RFC 8314).
    implicit_tls: frozenset[str] = frozenset()

    def __init__(
        self,
        config: Config,
        *,
        tls_context: ssl.SSLContext | None,
        max_connections: int,
        max_connections_per_ip: int,
        workers: int,
    ) -> None:
        self.config = config
        self.tls_context = tls_context
        self.max_connections = -(-max_connections // workers)
        self.max_per_ip = -(-max_connections_per_ip // workers)
        self.sessions: set[S] = set()
        self.per_ip: Counter[str] = Counter()
        self.tasks: set[asyncio.Task[None]] = set()
        self._servers: list[asyncio.Server] = []
        self._stopping = False

    # -- what a subclass says ------------------------------------------------

    def listeners(self) -> list[Listener]:
        raise NotImplementedError

    def new_session(self, listener: Listener) -> S:
        raise NotImplementedError

    # -- listening -----------------------------------------------------------

    async def start(self, sockets: dict[str, socket.socket] | None = None) -> None:
        """Serve every listener of ours.

        *sockets* maps listener names to sockets already bound and
        listening (the supervisor binds them once for all workers);
        without it each listener is bound here. Raises OSError if an
        address cannot be had.
        """
        loop = asyncio.get_running_loop()
        for listener in self.listeners():
            context = None
            if listener.kind in self.implicit_tls:
                if self.tls_context is None:
                    log.warning("listener %s needs TLS; skipped", listener.name)
                    continue
                context = self.tls_context

            def factory(listener: Listener = listener) -> asyncio.Protocol:
                session = self.new_session(listener)
                assert isinstance(session, asyncio.Protocol)
                return session

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

    @property
    def bound_ports(self) -> list[int]:
        """The ports actually bound (useful when a listener asked for 0)."""
        return [s.sockets[0].getsockname()[1] for s in self._servers if s.sockets]

    # -- sessions ------------------------------------------------------------

    def count_in(self, session: S) -> Refusal | None:
        """Count a new session in; None to serve it, else why not. A
        refused session is counted too, until ``release``."""
        self.sessions.add(session)
        self.per_ip[session.client_ip] += 1
        if self._stopping:
            return Refusal.STOPPING
        if len(self.sessions) > self.max_connections:
            return Refusal.TOO_MANY
        if self.per_ip[session.client_ip] > self.max_per_ip:
            return Refusal.TOO_MANY_FROM_ADDRESS
        return None

    def release(self, session: S) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            self.per_ip[session.client_ip] -= 1
            if self.per_ip[session.client_ip] <= 0:
                del self.per_ip[session.client_ip]

    async def stop(self) -> None:
        """Graceful shutdown; returns when every session is gone."""
        self._stopping = True
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
