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

Accepting, and sharing the work between workers. Every worker process
waits on the same listening sockets (bound once by the supervisor), and
the kernel wakes all of them for a new connection; whoever calls
accept() first gets it. Left alone, the worker that happens to be awake
takes a whole burst (asyncio's own server accepts in a loop until the
queue is empty), and four long POP3 or IMAP downloads, or twenty SMTP
sessions, end up 4:0 or 15:5 on two workers while a core idles. So we
accept one connection at a time, and a worker that serves more sessions
than the least busy one waits (a millisecond at a time, at most
``MAX_DEFER``) before accepting again, leaving the connection to the
other. The counts live in a ``LoadBoard``, a few integers in memory the
supervisor shares with its workers before it forks; a worker that
serves alone (``workers = 1``, or a test) has none and never waits.

Graceful stop (``stop``): stop listening; ask every session to finish
what it is doing (``begin_shutdown``: the transaction, the POP3 UPDATE,
the IMAP command in flight) and to refuse anything new; after
``smtp.shutdown_grace`` seconds abort whatever is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import logging
import mmap
import socket
import ssl
from collections import Counter
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from postroom import logs
from postroom.config import Config, Listener

log = logging.getLogger(__name__)


# The longest a busy worker lets a waiting connection be, in 1 ms steps,
# before it accepts it itself (the others may be stuck or restarting).
MAX_DEFER = 5
# accept() errors that say nothing about the listening socket.
_TRANSIENT = {errno.ECONNABORTED, errno.EPROTO, errno.EINTR, errno.EAGAIN}


class LoadBoard:
    """Live sessions per worker, in memory shared across ``fork``.

    One signed 64-bit slot per worker; each worker writes only its own
    (from its event loop thread), everyone reads all. Reads may be a
    moment stale: the board steers, it does not lock.
    """

    def __init__(self, workers: int) -> None:
        self._map = mmap.mmap(-1, 8 * max(workers, 1))
        self.slots = memoryview(self._map).cast("q")

    def reset(self, index: int) -> None:
        """Zero a slot: its worker is (re)starting."""
        self.slots[index] = 0


_board: LoadBoard | None = None
_slot = 0


def join_board(board: LoadBoard | None, index: int) -> None:
    """Make this process the worker of slot *index* (called once, after
    fork); None leaves it unbalanced."""
    global _board, _slot
    _board, _slot = board, index
    if board is not None:
        board.reset(index)


def _count(delta: int) -> None:
    if _board is not None:
        _board.slots[_slot] += delta


def _busier_than_others() -> bool:
    if _board is None:
        return False
    slots = _board.slots
    return slots[_slot] > min(slots)


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
        self._sockets: list[socket.socket] = []
        self._acceptors: list[asyncio.Task[None]] = []
        self._handshakes: set[asyncio.Task[None]] = set()
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

            sock = (sockets or {}).get(listener.name)
            if sock is None:
                sock = _bind(listener)
            sock.setblocking(False)
            self._sockets.append(sock)

            def factory(listener: Listener = listener) -> asyncio.Protocol:
                session = self.new_session(listener)
                assert isinstance(session, asyncio.Protocol)
                return session

            self._acceptors.append(
                loop.create_task(self._accept(sock, factory, context))
            )
            log.info(
                logs.event(
                    "listening",
                    listener=listener.name,
                    address=f"{listener.host}:{listener.port}",
                )
            )

    async def _accept(
        self,
        sock: socket.socket,
        factory: Callable[[], asyncio.Protocol],
        context: ssl.SSLContext | None,
    ) -> None:
        """Take connections from *sock* one at a time, for ever (until
        cancelled by ``stop``); see the module docstring."""
        loop = asyncio.get_running_loop()
        while True:
            for _ in range(MAX_DEFER):
                if not _busier_than_others():
                    break
                await asyncio.sleep(0.001)
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as e:
                if e.errno in _TRANSIENT:
                    continue
                # Out of file descriptors (EMFILE, ENFILE) or memory:
                # the connections wait in the kernel's queue meanwhile.
                log.error(logs.event("accept-failed", error=e.strerror))
                await asyncio.sleep(0.1)
                continue
            conn.setblocking(False)
            if context is None:
                await self._open(conn, factory, None)
            else:
                # A TLS handshake takes round trips: never wait for it
                # here, or one slow client would hold up everyone.
                task = loop.create_task(self._open(conn, factory, context))
                self._handshakes.add(task)
                task.add_done_callback(self._handshakes.discard)

    async def _open(
        self,
        conn: socket.socket,
        factory: Callable[[], asyncio.Protocol],
        context: ssl.SSLContext | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        # Counted from accept on, so a burst of TLS clients in their
        # handshakes also counts as load.
        _count(1)
        try:
            await loop.connect_accepted_socket(factory, conn, ssl=context)
        except OSError as e:  # ssl.SSLError and TimeoutError are OSErrors
            # A client that left or failed its TLS handshake: nothing
            # was said, nobody to tell. asyncio closed the socket.
            log.debug("connection not opened: %s", e)
            conn.close()
        finally:
            _count(-1)

    @property
    def bound_ports(self) -> list[int]:
        """The ports actually bound (useful when a listener asked for 0)."""
        return [sock.getsockname()[1] for sock in self._sockets]

    # -- sessions ------------------------------------------------------------

    def count_in(self, session: S) -> Refusal | None:
        """Count a new session in; None to serve it, else why not. A
        refused session is counted too, until ``release``."""
        self.sessions.add(session)
        self.per_ip[session.client_ip] += 1
        _count(1)
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
            _count(-1)
            self.per_ip[session.client_ip] -= 1
            if self.per_ip[session.client_ip] <= 0:
                del self.per_ip[session.client_ip]

    async def stop(self) -> None:
        """Graceful shutdown; returns when every session is gone."""
        self._stopping = True
        for task in [*self._acceptors, *self._handshakes]:
            task.cancel()
        for task in [*self._acceptors, *self._handshakes]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Our copy of each listening socket goes (as asyncio's server
        # would close it): once every process has let go, newcomers are
        # refused by the kernel instead of waiting in its queue.
        for sock in self._sockets:
            sock.close()
        for session in list(self.sessions):
            session.begin_shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.smtp.shutdown_grace
        while self.sessions and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for session in list(self.sessions):
            if session.transport is not None:
                session.transport.abort()


def _bind(listener: Listener) -> socket.socket:
    """A listening socket of our own, for a service started without the
    supervisor's (tests, embedding)."""
    family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((listener.host, listener.port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock
