"""Delivering over SMTP: the asyncio driver of the client core.

Theory of operation
-------------------
``SmtpClient.connect`` walks a ``Route``'s targets in order and each
target's addresses in order (RFC 5321 §5.1), and returns the first
session that is greeted, introduced (EHLO, or HELO when EHLO gets a
5xx), secured as ``route.tls`` demands and, for a smarthost, logged in.
It never resolves a name: ``Target.addresses`` are IP addresses our
resolver found; ``Target.host`` only names the peer for TLS and logs.

What makes ``connect`` move on:

* to the next *address*: connection refused or timed out, an address
  outside ``allowed_networks``, a greeting other than 220 (4xx per
  RFC 5321 §5.1; a 5xx too, remembered, as Postfix's
  ``smtp_skip_5xx_greeting`` does), EHLO and HELO both refused;
* to the next *target*: a TLS policy failure (``required``: STARTTLS
  not offered, refused, or the handshake failed; ``verify``: the same,
  or the certificate does not verify for ``Target.host``). Every
  address of a host shares its certificate and configuration, so
  trying its other addresses would only repeat the failure;
* nowhere: an AUTH failure raises at once. AUTH problems are our
  configuration, and every target would answer the same.

``opportunistic`` TLS uses STARTTLS when offered, accepts any
certificate (RFC 7435: an active attacker could strip STARTTLS anyway),
and after a failed handshake connects to the same address again without
TLS, as Postfix's ``may`` level does, because a peer with a broken TLS
stack should still get its mail.

When nothing worked, ``DeliveryError`` carries the most telling reply:
the last one that came from a server or a policy decision, else the
last connection failure (4.4.1, in our words). It is permanent only when
every attempt failed permanently; one temporary failure makes it
temporary, since a host that did not answer today may take the message
tomorrow.

``send`` runs one mail transaction and turns the core's per-recipient
replies into ``Result``s: 2xx delivered, 4xx deferred, 5xx bounced.
Some recipients are decided before anything is sent: a message over the
peer's SIZE (5.3.4), 8-bit content for a peer without 8BITMIME that
cannot be made 7-bit (5.6.3, RFC 6152 §3), an address that needs
SMTPUTF8 when the peer lacks it (5.6.7, RFC 6531 §3.2; a non-ASCII
*domain* alone is sent in A-labels instead), REQUIRETLS without a TLS
session to a peer offering it (5.7.30, RFC 8689 §4.2.1).

Timeouts (RFC 5321 §4.5.3.2) are ours, not the core's: the end of the
message text waits ``data_timeout``, every other reply and write
``command_timeout``. A timeout, a lost connection or a 421 defers every
recipient not yet decided (the core answers what is left with the
reason) and leaves the client unusable.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from postroom import logs
from postroom.delivery.outcome import (
    BOUNCED,
    DEFERRED,
    DELIVERED,
    DeliveryError,
    Peer,
    Result,
    Route,
    Target,
)
from postroom.errors import LocalProtocolError
from postroom.protocol.smtp import client as core
from postroom.protocol.smtp.client import (
    NEED_DATA,
    Capabilities,
    ClientConnection,
    MailRequest,
    RcptRequest,
)
from postroom.protocol.smtp.replies import Reply
from postroom.protocol.smtp.syntax import SyntaxProblem, to_ascii_domain
from postroom.queue.envelope import Envelope, Recipient
from postroom.server import tls as tls_contexts

log = logging.getLogger(__name__)

# QUIT is a courtesy; never wait long for its answer.
QUIT_TIMEOUT = 5.0
# Stop reading while this much is buffered and not yet parsed.
READ_HIGH_WATER = 1 << 20

_E = TypeVar("_E")


@dataclass
class ClientSettings:
    """How to connect; ``DeliveryConfig`` supplies the values.

    ``ca_file`` is the CA bundle for ``tls = "verify"`` ("" for the
    system's). ``allowed_networks``, when not empty, are the only
    networks we connect to (``ipaddress`` notation).
    ``mx_hosts_for_sts`` is reserved for MTA-STS and unused here.
    """

    helo_name: str
    connect_timeout: float = 30.0
    command_timeout: float = 300.0
    data_timeout: float = 600.0
    ca_file: str = ""
    allowed_networks: tuple[str, ...] = ()
    mx_hosts_for_sts: tuple[str, ...] | None = None


# ----------------------------------------------------------------------
# Made-up replies, for failures no server put into words


def _connect_failure(peer: Peer, why: str) -> Reply:
    return Reply.of(421, "4.4.1", f"Connection to {peer} {why}")


def _tls_failure(text: str) -> Reply:
    # 454 is STARTTLS's own "TLS not available" (RFC 3207 §4); 4.7.5 is
    # "cryptographic failure" (RFC 3463), the code Postfix logs too.
    return Reply.of(454, "4.7.5", text)


def _soften(reply: Reply) -> Reply:
    """The 4xx twin of a 5xx reply, text kept."""
    if reply.code < 500:
        return reply
    enhanced = "4" + reply.enhanced[1:] if reply.enhanced else ""
    return Reply(reply.code - 100, enhanced, reply.lines)


# ----------------------------------------------------------------------
# The wire: bytes both ways, nothing else


class _Wire(asyncio.Protocol):
    """A transport as awaitable reads and writes, with flow control.

    A Protocol rather than asyncio streams because of STARTTLS: a
    StreamReader would keep cleartext that arrived after the 220 and
    hand it out as if it had come over TLS (the client side of
    CVE-2011-0411); here ``start_tls`` drops it.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self._buf = bytearray()
        self._eof = False
        self._paused = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._closed = asyncio.Event()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, though uvloop's do not subclass asyncio's.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        self._readable.set()
        if len(self._buf) > READ_HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
            self._paused = True

    def eof_received(self) -> bool:
        self._eof = True
        self._readable.set()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = self._eof = True
        self._readable.set()
        self._writable.set()
        self._closed.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # Ours

    @property
    def at_eof(self) -> bool:
        return self._eof

    def take(self) -> bytes:
        """What has arrived, without waiting (b"" for nothing, or at the
        end of file: see ``at_eof``)."""
        data = bytes(self._buf)
        self._buf.clear()
        if not self._eof:
            self._readable.clear()
            if self._paused and self.transport is not None and not self.lost:
                self._paused = False
                self.transport.resume_reading()
        return data

    def write_nowait(self, data: bytes) -> bool:
        """Hand *data* to the transport; False if the caller must await
        ``drained`` before writing more."""
        if self.lost or self.transport is None:
            raise ConnectionResetError("connection lost")
        self.transport.write(data)
        return self._writable.is_set()

    async def drained(self) -> None:
        await self._writable.wait()
        if self.lost:
            raise ConnectionResetError("connection lost")

    def has_data(self) -> bool:
        """Bytes (or the end of file) wait to be taken."""
        return self._readable.is_set()

    async def readable(self) -> None:
        await self._readable.wait()

    async def start_tls(
        self, context: ssl.SSLContext, server_hostname: str | None, timeout: float
    ) -> None:
        assert self.transport is not None
        self._buf.clear()  # Cleartext after the 220: never trusted.
        if self._eof:
            # Gone before the handshake began; asyncio would wait for a
            # handshake on a closed transport until the timeout.
            raise ConnectionResetError("connection closed after STARTTLS")
        loop = asyncio.get_running_loop()
        new = await asyncio.wait_for(
            loop.start_tls(
                self.transport,
                self,
                context,
                server_hostname=server_hostname,
                ssl_handshake_timeout=timeout,
            ),
            timeout,
        )
        if new is None:  # pragma: no cover - asyncio's "closed meanwhile"
            raise ConnectionResetError("connection closed during the handshake")
        self.transport = new
        self._buf.clear()

    def tls_description(self) -> str:
        obj: Any = (
            self.transport.get_extra_info("ssl_object") if self.transport else None
        )
        if obj is None:
            return ""
        cipher = obj.cipher()
        return f"{obj.version()} {cipher[0] if cipher else ''}".strip()

    async def close(self, *, abort: bool = False) -> None:
        if self.transport is not None and not self.lost:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closed.wait(), 1.0)
        if not self.lost and self.transport is not None:
            self.transport.abort()


# ----------------------------------------------------------------------
# Connecting


class _Skip(Exception):
    """This attempt failed; try the next address (or target)."""

    def __init__(self, reply: Reply, *, next_target: bool = False) -> None:
        super().__init__(str(reply))
        self.reply = reply
        self.next_target = next_target


class _HandshakeFailed(Exception):
    """Opportunistic TLS failed: reconnect without it."""


@dataclass
class _Tally:
    """The failures of ``connect``, to pick the reply to report."""

    reply: Reply | None = None
    peer: Peer | None = None
    telling: bool = False
    temporary: bool = False

    def note(self, reply: Reply, peer: Peer) -> None:
        self.peer = peer
        self.temporary = self.temporary or reply.code < 500
        telling = reply.enhanced not in ("4.4.1", "4.4.2")
        if telling or not self.telling:
            self.reply, self.telling = reply, telling

    def error(self) -> DeliveryError:
        reply = self.reply or Reply.of(451, "4.4.4", "No host to deliver to")
        return DeliveryError(_soften(reply) if self.temporary else reply, self.peer)


class SmtpClient:
    """One SMTP session to a route's peer, ready for transactions.

    ``peer`` is who we talk to; ``tls`` describes the TLS session ("" in
    cleartext); ``capabilities`` are the peer's, from its last EHLO;
    ``messages_sent`` counts transactions completed here.
    """

    def __init__(
        self, peer: Peer, wire: _Wire, conn: ClientConnection, settings: ClientSettings
    ) -> None:
        self.peer = peer
        self.tls = ""
        self.capabilities: Capabilities = conn.capabilities
        self.messages_sent = 0
        self._wire = wire
        self._conn = conn
        self._settings = settings
        self._closed = False

    @property
    def usable(self) -> bool:
        """Open, and idle between transactions."""
        return self._conn.ready and not self._wire.at_eof

    @classmethod
    async def connect(cls, route: Route, settings: ClientSettings) -> SmtpClient:
        """A session with the first target that works; see the module
        docstring. Raises ``DeliveryError`` when none does."""
        networks = [
            ipaddress.ip_network(n, strict=False) for n in settings.allowed_networks
        ]
        tally = _Tally()
        for target in route.targets:
            for address in target.addresses:
                peer = Peer(target.host, address, target.port)
                try:
                    _check_address(peer, networks)
                    return await cls._attempt(route, target, peer, settings)
                except _Skip as skip:
                    log.info(
                        logs.event(
                            "connect",
                            relay=str(peer),
                            result="failed",
                            reply=str(skip.reply),
                        )
                    )
                    tally.note(skip.reply, peer)
                    if skip.next_target:
                        break
        raise tally.error()

    @classmethod
    async def _attempt(
        cls,
        route: Route,
        target: Target,
        peer: Peer,
        settings: ClientSettings,
        *,
        try_tls: bool = True,
    ) -> SmtpClient:
        client = await cls._open(peer, settings)
        try:
            await client._greet()
            await client._hello()
            if try_tls:
                await client._secure(route.tls, target.host)
            if route.auth is not None:
                await client._login(*route.auth)
        except _HandshakeFailed:
            await client._wire.close(abort=True)
            log.warning(
                logs.event(
                    "tls", relay=str(peer), result="failed", fallback="cleartext"
                )
            )
            return await cls._attempt(route, target, peer, settings, try_tls=False)
        except BaseException:
            await client._wire.close(abort=True)
            raise
        log.info(
            logs.event("connect", relay=str(peer), result="ok", tls=client.tls or None)
        )
        return client

    @classmethod
    async def _open(cls, peer: Peer, settings: ClientSettings) -> SmtpClient:
        loop = asyncio.get_running_loop()
        timeout = settings.connect_timeout
        try:
            _transport, wire = await asyncio.wait_for(
                loop.create_connection(
                    _Wire, peer.address, peer.port, flags=socket.AI_NUMERICHOST
                ),
                timeout,
            )
        except TimeoutError:
            raise _Skip(
                _connect_failure(peer, f"timed out after {timeout:g}s")
            ) from None
        except ConnectionRefusedError:
            raise _Skip(_connect_failure(peer, "refused")) from None
        except OSError as e:
            why = e.strerror or type(e).__name__
            raise _Skip(_connect_failure(peer, f"failed: {why}")) from None
        return cls(peer, wire, ClientConnection(), settings)

    async def _greet(self) -> None:
        greeting = await self._until(core.Greeting)
        if greeting.reply.code != 220:
            await self._quit()
            raise _Skip(greeting.reply)

    async def _hello(self) -> None:
        conn = self._conn
        name = self._settings.helo_name or "localhost"
        conn.ehlo(name)
        done = await self._until(core.EhloDone)
        # RFC 5321 §3.2: a server without ESMTP answers EHLO with 5xx;
        # HELO is the fallback, but never after STARTTLS (RFC 3207 §4.2
        # wants EHLO) and never when EHLO got a 421.
        if 500 <= done.reply.code < 600 and not self.tls and not conn.closed:
            conn.helo(name)
            done = await self._until(core.EhloDone)
        if not conn.ready:
            await self._quit()
            raise _Skip(done.reply)
        self.capabilities = conn.capabilities

    async def _secure(self, policy: str, host: str) -> None:
        if policy == "none":
            return
        conn, peer = self._conn, self.peer
        may = policy == "opportunistic"
        if not conn.capabilities.starttls:
            if may:
                return
            await self._quit()
            raise _Skip(
                _tls_failure(f"TLS is required, but was not offered by {peer}"),
                next_target=True,
            )
        conn.starttls()
        done = await self._until(core.StartTlsDone)
        if not done.ready:
            if conn.closed:
                raise _Skip(done.reply)
            if may:
                return
            await self._quit()
            raise _Skip(
                _tls_failure(
                    f"TLS is required, but {peer} refused STARTTLS: {done.reply}"
                ),
                next_target=True,
            )

        verify = policy == "verify"
        name = host.strip("[]").rstrip(".") or None
        try:
            context = tls_contexts.client_context(
                self._settings.ca_file or None, verify=verify
            )
            await self._wire.start_tls(context, name, self._settings.command_timeout)
        except (OSError, ssl.SSLError, TimeoutError, ValueError) as e:
            if may:
                raise _HandshakeFailed from e
            raise _Skip(
                _tls_failure(f"TLS with {peer} failed: {_tls_reason(e)}"),
                next_target=True,
            ) from None
        conn.tls_started()
        self.tls = self._wire.tls_description()
        await self._hello()

    async def _login(self, username: str, password: str) -> None:
        conn = self._conn
        if not {"PLAIN", "LOGIN"} & set(conn.capabilities.auth):
            await self._quit()
            raise DeliveryError(
                Reply.of(
                    454,
                    "4.7.0",
                    f"Authentication is set up for this route, but {self.peer} "
                    "offers neither AUTH PLAIN nor AUTH LOGIN",
                ),
                self.peer,
            )
        conn.auth(username, password)
        done = await self._until(core.AuthDone)
        if not 200 <= done.reply.code < 300:
            await self._quit()
            # Like Postfix's smtp_sasl_auth_soft_bounce: credentials are
            # our own configuration, and fixing them must not have cost
            # every queued message a bounce.
            raise DeliveryError(_soften(done.reply), self.peer)

    # ------------------------------------------------------------------
    # Transactions

    async def send(
        self, envelope: Envelope, recipients: Sequence[Recipient], content: bytes
    ) -> list[Result]:
        """One transaction; one ``Result`` per recipient, in order."""
        if not recipients:
            return []
        self._absorb()
        if self.usable and self._conn.needs_reset:
            await self.reset()
        if not self.usable:
            lost = Reply.of(421, "4.4.2", f"Connection to {self.peer} is not usable")
            return [self._result(lost)] * len(recipients)

        plan = self._plan(envelope, recipients, content)
        if isinstance(plan, Reply):
            return [self._result(plan)] * len(recipients)
        decided, (mail, rcpts, indexes, text, use_bdat) = plan
        if rcpts:
            self._conn.send_transaction(mail, rcpts, text, use_bdat=use_bdat)
            done = await self._until(core.TransactionDone)
            self.messages_sent += 1
            decided.update(zip(indexes, done.per_recipient, strict=True))
            await self._settle()
        return [self._result(decided[i]) for i in range(len(recipients))]

    def _plan(
        self, envelope: Envelope, recipients: Sequence[Recipient], content: bytes
    ) -> Reply | tuple[dict[int, Reply], _Transaction]:
        """What to send, and the recipients decided without sending; or
        one reply that decides them all."""
        caps = self.capabilities
        peer = self.peer

        # Addresses: SMTPUTF8 if asked and offered, else A-label domains.
        utf8 = envelope.smtputf8 and caps.smtputf8
        needs_utf8 = Reply.of(
            553, "5.6.7", f"{peer} does not support SMTPUTF8, needed for this message"
        )
        if _BAD_ADDRESS.search(envelope.sender):
            return Reply.of(553, "5.1.7", "Bad sender address syntax")
        sender = _wire_address(envelope.sender, utf8)
        if sender is None:
            return needs_utf8
        if envelope.smtputf8 and not utf8 and not _header(content).isascii():
            return needs_utf8
        decided: dict[int, Reply] = {}
        rcpts: list[RcptRequest] = []
        indexes: list[int] = []
        for i, r in enumerate(recipients):
            address = _wire_address(r.address, utf8)
            if _BAD_ADDRESS.search(r.address):
                decided[i] = Reply.of(553, "5.1.3", "Bad recipient address syntax")
                continue
            if address is None:
                decided[i] = needs_utf8
                continue
            rcpts.append(RcptRequest(address, r.notify, r.orcpt))
            indexes.append(i)

        # Content: BINARYMIME needs CHUNKING; 8-bit needs 8BITMIME, or a
        # conversion to 7 bits (RFC 6152 §3).
        body = envelope.body.upper()
        if body == "BINARYMIME" and caps.binarymime and caps.chunking:
            pass
        elif body == "BINARYMIME" or not content.isascii():
            # XXX: BINARYMIME content for a peer without it always goes
            # through to_7bit, even when it would pass as 8BITMIME,
            # because its lines may be too long or end in bare LF.
            if caps.eightbitmime and body != "BINARYMIME":
                body = "8BITMIME"
            else:
                converted = _to_7bit(content)
                if converted is None:
                    return Reply.of(
                        554,
                        "5.6.3",
                        f"{peer} does not support 8BITMIME and the message "
                        "cannot be converted to 7 bits",
                    )
                content, body = converted, "7BIT"
        elif body not in ("7BIT", "8BITMIME"):
            body = ""
        if body == "8BITMIME" and not caps.eightbitmime:
            body = ""

        if caps.size and len(content) > caps.size:
            return Reply.of(
                552,
                "5.3.4",
                f"Message size {len(content)} exceeds the limit of {caps.size} "
                f"octets at {peer}",
            )
        # XXX: RFC 8689 §4.2.1 would try the other MX hosts before
        # giving up, and wants the TLS session verified (DANE/MTA-STS);
        # we bounce at the first peer that cannot, because connect()
        # does not know the message yet.
        if envelope.requiretls and not (caps.requiretls and self.tls):
            return Reply.of(
                550, "5.7.30", f"REQUIRETLS is needed, and {peer} cannot honour it"
            )

        mail = MailRequest(
            sender,
            size=len(content),
            body=body,
            smtputf8=utf8,
            ret=envelope.ret,
            envid=envelope.envid,
            requiretls=envelope.requiretls,
        )
        return decided, (mail, rcpts, indexes, content, caps.chunking)

    def _result(self, reply: Reply) -> Result:
        if 200 <= reply.code < 300:
            status = DELIVERED
        elif reply.code >= 500:
            status = BOUNCED
        else:
            status = DEFERRED
        return Result(status, reply, self.peer)

    async def reset(self) -> None:
        """RSET, when a failed transaction may have left the server
        inside one; a refused RSET leaves nothing to trust, so the
        connection is closed."""
        if not self.usable or not self._conn.needs_reset:
            return
        self._conn.rset()
        done = await self._until(core.RsetDone)
        await self._settle()
        if not 200 <= done.reply.code < 300:
            await self.close()

    async def close(self) -> None:
        """QUIT (best effort, ``QUIT_TIMEOUT`` at most), then close."""
        if self._wire.transport is None or self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError, LocalProtocolError):
            await self._quit()
        await self._wire.close(abort=not self._conn.closed)
        log.info(
            logs.event("disconnect", relay=str(self.peer), messages=self.messages_sent)
        )

    # ------------------------------------------------------------------
    # Running the core

    async def _until(self, kind: type[_E]) -> _E:
        """Move bytes until the core says *kind*; it always does, since
        the core ends every operation with its event, even on failure."""
        conn = self._conn
        while True:
            event = conn.next_event()
            if isinstance(event, kind):
                return event
            if event is not NEED_DATA:
                continue  # Closed, after the event we wait for.
            if conn.closed:
                raise LocalProtocolError(f"waiting for {kind.__name__} after Closed")
            # Replies may have queued commands (the next RCPT, the
            # message text): send them before waiting for more.
            await self._flush()
            if not conn.closed:
                await self._fill()

    # _flush and _fill run several times per message: they await only
    # when they must (the socket's buffer is full, no reply is in yet),
    # and then under asyncio.timeout, which costs a timer where
    # wait_for costs a task.

    async def _flush(self) -> None:
        conn = self._conn
        data = conn.data_to_send()
        if not data:
            return
        wire = self._wire
        try:
            if wire.write_nowait(data):
                return
            timeout = self._timeout()
            try:
                async with asyncio.timeout(timeout):
                    await wire.drained()
            except TimeoutError:
                conn.abort(self._timed_out(timeout, "writing to"))
        except OSError:
            conn.abort(Reply.of(421, "4.4.2", f"Connection to {self.peer} lost"))

    async def _fill(self) -> None:
        conn = self._conn
        wire = self._wire
        if not wire.has_data():
            timeout = self._timeout()
            try:
                async with asyncio.timeout(timeout):
                    await wire.readable()
            except TimeoutError:
                what = f"waiting for the reply to {conn.awaiting} from"
                conn.abort(self._timed_out(timeout, what))
                return
        conn.receive_data(wire.take())

    def _timeout(self) -> float:
        settings = self._settings
        if self._conn.awaiting_data_end:
            return settings.data_timeout
        return settings.command_timeout

    def _timed_out(self, timeout: float, what: str) -> Reply:
        return Reply.of(
            421, "4.4.2", f"Timed out after {timeout:g}s {what} {self.peer}"
        )

    async def _settle(self) -> None:
        # The core has closed (421, EOF, timeout): let go of the socket.
        if self._conn.closed:
            await self._wire.close(abort=True)

    async def _quit(self) -> None:
        # A courtesy, so bounded by QUIT_TIMEOUT whatever the settings.
        conn = self._conn
        if not (conn.ready or conn.state is core.State.INITIAL) or self._wire.at_eof:
            return
        conn.quit()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._until(core.QuitDone), QUIT_TIMEOUT)

    def _absorb(self) -> None:
        """Take in what the server said while we were idle, such as a
        421 before it hangs up, so that it does not pass for the answer
        to our next command."""
        conn = self._conn
        if not conn.ready:
            return
        data = self._wire.take()
        if data:
            conn.receive_data(data)
        if self._wire.at_eof:
            conn.receive_data(b"")
        while conn.next_event() is not NEED_DATA:
            pass


# What must never reach a command line from an address (the core would
# refuse it): line ends and other controls, and the path's own brackets.
_BAD_ADDRESS = re.compile(r"[\x00-\x1f\x7f<>]")

_Transaction = tuple[MailRequest, list[RcptRequest], list[int], bytes, bool]


_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _check_address(peer: Peer, networks: Sequence[_Network]) -> None:
    # Connect only to IP addresses, and only where we are allowed to.
    try:
        ip = ipaddress.ip_address(peer.address)
    except ValueError:
        raise _Skip(
            Reply.of(451, "4.4.0", f"Not connecting to {peer}: not an IP address")
        ) from None
    if networks and not any(ip in net for net in networks):
        raise _Skip(
            Reply.of(
                451,
                "4.4.0",
                f"Not connecting to {peer}: address not allowed for delivery",
            )
        )


def _wire_address(address: str, utf8: bool) -> str | None:
    """*address* as it may go out: as it is with SMTPUTF8, else with its
    domain in A-labels; None when the local part is not ASCII (that
    needs SMTPUTF8, RFC 6531 §3.2)."""
    if utf8 or address.isascii():
        return address
    local, at, domain = address.rpartition("@")
    if not at or not local.isascii():
        return None
    try:
        return f"{local}@{to_ascii_domain(domain, Reply.of(553, '5.1.3', ''))}"
    except SyntaxProblem:
        return None


def _header(content: bytes) -> bytes:
    end = content.find(b"\r\n\r\n")
    return content if end < 0 else content[:end]


def _to_7bit(content: bytes) -> bytes | None:
    # Imported here: the converter is big and only needed for the rare
    # peer without 8BITMIME.
    from postroom.delivery import downgrade

    return downgrade.to_7bit(content)


def _tls_reason(error: BaseException) -> str:
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"certificate verification failed: {error.verify_message}"
    if isinstance(error, ssl.SSLError) and error.reason:
        return error.reason.lower().replace("_", " ")
    if isinstance(error, TimeoutError):
        return "handshake timed out"
    return str(error) or type(error).__name__
