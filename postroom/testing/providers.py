"""Scripted fake mail providers: SMTP servers on loopback that behave
like the receivers delivery meets in the wild, for tests.

A ``FakeProvider`` listens on a loopback address of the test's choosing
(127.0.0.2, 127.0.0.3, ... are distinct hosts on Linux, so one test can
run a "gmail" and an "outlook" side by side) and a port (0: a free one,
read back from ``.port``). It records every connection (``Connection``:
EHLO name, TLS, command lines, replies) and every message that reached
its end of data (``Transaction``), and does what its ``Behaviour``
says: accept everything, refuse chosen recipients, answer 4xx to every
RCPT, greylist, throttle, answer slowly, hang up after a given command,
insist on STARTTLS, advertise or hide extensions, refuse at greeting.

The behaviour is read afresh at every step, never copied into a
connection, so a test may change it while clients are connected::

    async with FakeProvider("127.0.0.2", rcpt_reply=TRY_LATER) as mx:
        ...                          # every RCPT gets 451 4.3.0
        mx.update(rcpt_reply=None)   # and now everything is accepted

Delivery tests run the server under test in another process and talk
to the provider from a plain function, so it also runs on its own event
loop in a thread::

    with FakeProvider.in_thread("127.0.0.3", greylist=True) as mx:
        ...
        mx.wait_for_sync(1)

The protocol, kept small but honest where clients are tested:

* PIPELINING: commands are read as they come and answered one by one,
  in order, whatever arrives in one segment; ``Connection.pipelined``
  says whether the client ever sent ahead of a reply (a bug when
  PIPELINING was not advertised).
* DATA ends only at ``<CRLF>.<CRLF>``; lines are dot-unstuffed. BDAT
  (CHUNKING) reads exactly the announced octets.
* STARTTLS forgets the EHLO name and the transaction (RFC 3207 §4.2).
* A 421 reply closes the connection; any other refusing greeting makes
  every command but QUIT answer 503 (RFC 5321 §3.1).

Parsing of paths and parameters is the server's own
(``protocol.smtp.syntax``), so the fake never disagrees with us about
what an address is; the command loop is written here, since aiosmtpd
cannot drop a connection mid-command, delay single replies, or
greylist per (sender, recipient).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from postroom.config import Config
from postroom.protocol.smtp import replies
from postroom.protocol.smtp.replies import Reply
from postroom.protocol.smtp.syntax import (
    SyntaxProblem,
    has_non_ascii,
    parse_parameters,
    parse_path,
)

HOSTNAME: Final = "mx.fake.test"

# Replies a test scripts or compares against (aiosmtpd's statuscodes
# habit): named once here rather than spelt out in every test.
USER_UNKNOWN: Final = Reply.of(550, "5.1.1", "User unknown")
MAILBOX_FULL: Final = Reply.of(452, "4.2.2", "Mailbox full, try again later")
TRY_LATER: Final = Reply.of(451, "4.3.0", "Temporary failure, try again later")
GREYLISTED: Final = Reply.of(450, "4.7.1", "Greylisted, please try again later")
THROTTLED: Final = Reply.of(
    421, "4.7.0", "Too many messages on this connection, try again later"
)
TLS_REQUIRED: Final = Reply.of(530, "5.7.0", "Must issue a STARTTLS command first")
SPAM: Final = Reply.of(554, "5.7.1", "Message rejected as spam")
BAD_SEQUENCE: Final = Reply.of(503, "5.5.1", "Bad sequence of commands")

# Where a connection can be dropped or a reply delayed: the command
# verbs, plus these.
CONNECT: Final = "CONNECT"  # drop at once, before the greeting
GREETING: Final = "GREETING"  # delay the greeting
END_OF_DATA: Final = "END-OF-DATA"  # after the message, before its reply

_COMMAND_LIMIT = 4096
_DATA_LINE_LIMIT = 1 << 20


@dataclass
class Behaviour:
    """What a provider does; every field is read when it matters.

    Extensions: ``pipelining``, ``eightbitmime``, ``smtputf8``,
    ``chunking``, ``dsn`` are advertised when true; ``size`` advertises
    ``SIZE n`` and enforces it (552 5.3.4); ``starttls`` advertises
    STARTTLS when the provider has a TLS context, and ``require_tls``
    answers MAIL without TLS with ``TLS_REQUIRED``.

    Replies: ``greeting`` replaces the 220 (a 421 hangs up, another
    refusal makes every command but QUIT a 503). ``mail_reply``,
    ``rcpt_reply``, ``data_reply`` (to the DATA or BDAT command) and
    ``message_reply`` (at end of data) replace the usual answer when
    set. ``reject`` maps recipient addresses (any case) to the reply
    they get. ``greylist`` refuses the first attempt of every (sender,
    recipient) pair with ``GREYLISTED`` and admits retries made at least
    ``greylist_delay`` seconds later. ``max_messages_per_connection``
    answers the next MAIL with ``THROTTLED`` and hangs up;
    ``max_recipients`` refuses further RCPTs with 452 4.5.3.

    Timing and failures: ``delay`` seconds pass before every reply,
    ``delays`` overrides it per point (a verb, ``GREETING`` or
    ``END_OF_DATA``). ``drop_after`` hangs up without a reply when the
    client has sent that command (a verb, ``END_OF_DATA``), or at once
    for ``CONNECT``.
    """

    hostname: str = HOSTNAME
    pipelining: bool = True
    eightbitmime: bool = True
    smtputf8: bool = True
    chunking: bool = False
    dsn: bool = True
    size: int | None = None
    starttls: bool = True
    require_tls: bool = False
    greeting: Reply | None = None
    mail_reply: Reply | None = None
    rcpt_reply: Reply | None = None
    data_reply: Reply | None = None
    message_reply: Reply | None = None
    reject: dict[str, Reply] = field(default_factory=dict)
    greylist: bool = False
    greylist_delay: float = 0.0
    max_messages_per_connection: int | None = None
    max_recipients: int | None = None
    delay: float = 0.0
    delays: dict[str, float] = field(default_factory=dict)
    drop_after: str | None = None


@dataclass
class Connection:
    """One client connection as the provider saw it."""

    peer: tuple[str, int]
    ehlo: str = ""
    tls: bool = False
    commands: list[str] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)
    pipelined: bool = False


@dataclass
class Transaction:
    """A message that reached its end of data.

    ``data`` is the content as the client meant it (dot-unstuffed, or
    the BDAT chunks joined). ``reply`` is what the provider answered at
    end of data, None when it hung up instead (``drop_after``
    END_OF_DATA): the client cannot know whether the message arrived.
    """

    sender: str
    recipients: list[str]
    data: bytes
    tls: bool
    ehlo: str
    mail_params: dict[str, str | None]
    rcpt_params: dict[str, dict[str, str | None]]
    chunked: bool
    connection: int
    reply: Reply | None

    @property
    def accepted(self) -> bool:
        return self.reply is not None and self.reply.code < 400


def tls_context(
    hostname: str = HOSTNAME, directory: str | None = None
) -> ssl.SSLContext:
    """A server context with a self-signed certificate for *hostname*
    (and localhost, 127.0.0.1), made by ``postroom.server.tls``.

    With *directory*, the pair stays there (under ``tls/``) for a client
    that wants to verify it; otherwise it lives in a temporary directory
    only while the context loads it.
    """
    from postroom.server import tls  # only tests that want TLS pay for it

    if directory is not None:
        return tls.server_context(Config(data_dir=directory, hostname=hostname))
    with tempfile.TemporaryDirectory(prefix="fake-provider-") as tmp:
        return tls.server_context(Config(data_dir=tmp, hostname=hostname))


class FakeProvider:
    """A scripted SMTP server; see the module docstring.

    *tls* is a server context, or True for ``tls_context(hostname)``.
    Keyword arguments are ``Behaviour`` fields, applied over *behaviour*.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        behaviour: Behaviour | None = None,
        *,
        tls: ssl.SSLContext | bool = False,
        **changes: Any,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.behaviour = dataclasses.replace(behaviour or Behaviour(), **changes)
        if tls is True:
            tls = tls_context(self.behaviour.hostname)
        self.tls: ssl.SSLContext | None = tls or None
        self.connections: list[Connection] = []
        self.transactions: list[Transaction] = []
        self._greylist: dict[tuple[str, str], float] = {}
        self._server: asyncio.Server | None = None
        # The tasks asyncio runs per connection, and the session each
        # runs in a task of ours: close() cancels the latter, since a
        # connection task ending cancelled makes asyncio log an error.
        self._handlers: set[asyncio.Task[None]] = set()
        self._sessions: set[asyncio.Task[None]] = set()
        self._arrived = threading.Condition()

    # -- life ------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the provider is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.host, self._requested_port
        )

    async def close(self) -> None:
        """Stop listening and hang up on every client."""
        if self._server is not None:
            self._server.close()
        for task in list(self._sessions):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> FakeProvider:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @classmethod
    @contextlib.contextmanager
    def in_thread(cls, *args: Any, **kwargs: Any) -> Iterator[FakeProvider]:
        """Run a provider on an event loop of its own, in a daemon
        thread, for synchronous tests. Arguments are the constructor's."""
        provider = cls(*args, **kwargs)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=loop.run_forever, name="fake-provider", daemon=True
        )
        thread.start()

        try:
            asyncio.run_coroutine_threadsafe(provider.start(), loop).result(10)
            yield provider
        finally:
            try:
                asyncio.run_coroutine_threadsafe(provider.close(), loop).result(10)
            finally:
                loop.call_soon_threadsafe(loop.stop)
                thread.join(10)
                loop.close()

    # -- for tests -------------------------------------------------------

    def update(self, **changes: Any) -> None:
        """Change some ``Behaviour`` fields, at once for all connections."""
        self.behaviour = dataclasses.replace(self.behaviour, **changes)

    @property
    def accepted(self) -> list[Transaction]:
        """The transactions answered with 2xx at end of data."""
        return [t for t in self.transactions if t.accepted]

    def forget(self) -> None:
        """Clear the records and the greylist's memory."""
        self.connections.clear()
        self.transactions.clear()
        self._greylist.clear()

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[Transaction]:
        """Wait until *count* transactions arrived; TimeoutError if not."""
        deadline = time.monotonic() + timeout
        while len(self.transactions) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.transactions)} of {count} messages")
            await asyncio.sleep(0.01)
        return list(self.transactions)

    def wait_for_sync(self, count: int, timeout: float = 5.0) -> list[Transaction]:
        """``wait_for`` for a thread other than the provider's."""
        with self._arrived:
            if not self._arrived.wait_for(
                lambda: len(self.transactions) >= count, timeout
            ):
                raise TimeoutError(f"{len(self.transactions)} of {count} messages")
            return list(self.transactions)

    # -- used by sessions ------------------------------------------------

    def _record(self, transaction: Transaction) -> None:
        with self._arrived:
            self.transactions.append(transaction)
            self._arrived.notify_all()

    def _greylisted(self, sender: str, recipient: str) -> bool:
        # postgrey's rule: remember the first attempt; admit a retry
        # once the delay has passed, and every attempt after that.
        key = (sender.lower(), recipient.lower())
        now = time.monotonic()
        if key not in self._greylist:
            self._greylist[key] = now
            return True
        return now - self._greylist[key] < self.behaviour.greylist_delay

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        log = Connection(peer=writer.get_extra_info("peername")[:2])
        self.connections.append(log)
        index = len(self.connections) - 1
        session = asyncio.create_task(
            _Session(self, reader, writer, log, index).run()
        )
        self._sessions.add(session)
        try:
            await session
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError, _Closed):
            pass  # the client went away, or we hung up: both are normal here
        except asyncio.CancelledError:
            if not session.cancelled():
                raise
        finally:
            self._sessions.discard(session)
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
            self._handlers.discard(handler)


class _Closed(Exception):
    """The session ends here (we hung up, or the client did)."""


class _Session:
    """One connection's conversation. Handlers return after writing
    their reply; raising ``_Closed`` ends the connection."""

    def __init__(
        self,
        provider: FakeProvider,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        log: Connection,
        index: int,
    ) -> None:
        self.provider = provider
        self.reader = reader
        self.writer = writer
        self.log = log
        self.index = index
        self.buffer = bytearray()
        self.refused = False  # the greeting refused service
        self.greeted = False
        self.esmtp = False
        self.messages = 0
        self._reset()

    @property
    def b(self) -> Behaviour:
        return self.provider.behaviour

    def _reset(self) -> None:
        self.sender: str | None = None
        self.mail_params: dict[str, str | None] = {}
        self.recipients: list[str] = []
        self.rcpt_params: dict[str, dict[str, str | None]] = {}
        self.chunks: bytearray | None = None
        self.chunk_failed = False

    async def run(self) -> None:
        if self.b.drop_after == CONNECT:
            return
        await self._greet()
        while True:
            line = await self._read_line(_COMMAND_LIMIT)
            text = line.rstrip(b"\r\n").decode("utf-8", "surrogateescape")
            self.log.commands.append(text)
            verb, _, arg = text.partition(" ")
            verb = verb.upper()
            if self.b.drop_after == verb:
                raise _Closed
            if self.refused and verb != "QUIT":
                await self._reply(BAD_SEQUENCE, verb)
                continue
            handler = self._handlers.get(verb)
            if handler is None:
                await self._reply(replies.UNKNOWN_COMMAND, verb)
                continue
            await handler(self, arg.strip(" "))

    # -- input and output --------------------------------------------------

    async def _fill(self) -> None:
        chunk = await self.reader.read(65536)
        if not chunk:
            raise _Closed
        self.buffer += chunk

    async def _read_line(self, limit: int) -> bytes:
        while (end := self.buffer.find(b"\n")) < 0:
            if len(self.buffer) > limit:
                await self._reply(replies.LINE_TOO_LONG, "")
                raise _Closed
            await self._fill()
        line = bytes(self.buffer[: end + 1])
        del self.buffer[: end + 1]
        return line

    async def _read_exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            await self._fill()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def _reply(self, reply: Reply, point: str) -> None:
        delay = self.b.delays.get(point, self.b.delay)
        if delay:
            await asyncio.sleep(delay)
        if self.buffer:
            # The client did not wait for this reply before sending more.
            self.log.pipelined = True
        self.log.replies.append(reply)
        self.writer.write(reply.render())
        await self.writer.drain()
        if reply.code == 421:
            raise _Closed

    # -- commands ------------------------------------------------------------

    async def _greet(self) -> None:
        greeting = self.b.greeting or Reply.of(
            220, "", f"{self.b.hostname} ESMTP fake provider"
        )
        # RFC 5321 §3.1: after a refusing greeting (554) the server
        # waits for QUIT; 421 hangs up in _reply.
        self.refused = greeting.code >= 400
        await self._reply(greeting, GREETING)

    async def _ehlo(self, arg: str) -> None:
        if not arg:
            await self._reply(replies.HELO_SYNTAX, "EHLO")
            return
        self._hello(arg, esmtp=True)
        b = self.b
        lines = [b.hostname]
        offers = [
            (b.pipelining, "PIPELINING"),
            (b.size is not None, f"SIZE {b.size}"),
            (b.eightbitmime, "8BITMIME"),
            (b.smtputf8, "SMTPUTF8"),
            (b.chunking, "CHUNKING"),
            (b.dsn, "DSN"),
            (self._can_starttls(), "STARTTLS"),
            (True, "ENHANCEDSTATUSCODES"),
        ]
        lines += [name for offered, name in offers if offered]
        await self._reply(Reply.of(250, "", *lines), "EHLO")

    async def _helo(self, arg: str) -> None:
        if not arg:
            await self._reply(replies.HELO_SYNTAX, "HELO")
            return
        self._hello(arg, esmtp=False)
        await self._reply(Reply.of(250, "", self.b.hostname), "HELO")

    def _hello(self, name: str, *, esmtp: bool) -> None:
        self._reset()
        self.greeted = True
        self.esmtp = esmtp
        self.log.ehlo = name

    def _can_starttls(self) -> bool:
        return self.provider.tls is not None and self.b.starttls and not self.log.tls

    async def _starttls(self, arg: str) -> None:
        if arg:
            await self._reply(replies.NO_ARGUMENTS, "STARTTLS")
            return
        if self.log.tls:
            await self._reply(replies.TLS_ACTIVE, "STARTTLS")
            return
        if not self._can_starttls() or self.provider.tls is None:
            await self._reply(replies.TLS_NOT_AVAILABLE, "STARTTLS")
            return
        await self._reply(replies.READY_TLS, "STARTTLS")
        # RFC 3207 §4.2: nothing sent before the handshake counts after
        # it. XXX: bytes still in the StreamReader's own buffer (not
        # ours) survive; no client we test sends ahead of the 220.
        self.buffer.clear()
        await self.writer.start_tls(self.provider.tls)
        self.log.tls = True
        self.greeted = False
        self.log.ehlo = ""
        self._reset()

    async def _mail(self, arg: str) -> None:
        b = self.b
        refusal = self._mail_refusal(arg)
        if refusal is not None:
            await self._reply(refusal, "MAIL")
            return
        limit = b.max_messages_per_connection
        if limit is not None and self.messages >= limit:
            await self._reply(THROTTLED, "MAIL")  # and hang up
            return
        try:
            address, rest = parse_path(arg[5:], null_ok=True, bad=replies.MAIL_SYNTAX)
            params = parse_parameters(rest)
        except SyntaxProblem as e:
            await self._reply(e.reply, "MAIL")
            return
        refusal = self._mail_params_refusal(params)
        if refusal is None and has_non_ascii(address) and "SMTPUTF8" not in params:
            refusal = replies.NON_ASCII_ADDRESS
        refusal = refusal or b.mail_reply
        if refusal is not None and not refusal.positive:
            await self._reply(refusal, "MAIL")
            return
        self.sender = str(address)
        self.mail_params = params
        await self._reply(refusal or replies.SENDER_OK, "MAIL")

    def _mail_refusal(self, arg: str) -> Reply | None:
        if not self.greeted:
            return replies.NEED_HELO
        if self.sender is not None:
            return replies.NESTED_MAIL
        if self.b.require_tls and not self.log.tls:
            return TLS_REQUIRED
        if not arg.upper().startswith("FROM:"):
            return replies.MAIL_SYNTAX
        return None

    def _mail_params_refusal(self, params: dict[str, str | None]) -> Reply | None:
        b = self.b
        offered = {
            "SIZE": b.size is not None,
            "SMTPUTF8": b.smtputf8,
            "RET": b.dsn,
            "ENVID": b.dsn,
            "BODY": True,
        }
        for key in params:
            if not (self.esmtp and offered.get(key, False)):
                return replies.UNKNOWN_PARAMETER
        body = (params.get("BODY") or "7BIT").upper()
        if body not in ("7BIT", "8BITMIME", "BINARYMIME") or (
            (body == "8BITMIME" and not b.eightbitmime)
            or (body == "BINARYMIME" and not b.chunking)
        ):
            return replies.UNKNOWN_PARAMETER
        size = params.get("SIZE")
        if b.size is not None and size is not None:
            if not size.isdigit():
                return replies.UNKNOWN_PARAMETER
            if int(size) > b.size:
                return replies.MESSAGE_TOO_BIG
        return None

    async def _rcpt(self, arg: str) -> None:
        b = self.b
        if self.sender is None:
            await self._reply(replies.NEED_MAIL, "RCPT")
            return
        if not arg.upper().startswith("TO:"):
            await self._reply(replies.RCPT_SYNTAX, "RCPT")
            return
        try:
            address, rest = parse_path(arg[3:], null_ok=False, bad=replies.RCPT_SYNTAX)
            params = parse_parameters(rest)
        except SyntaxProblem as e:
            await self._reply(e.reply, "RCPT")
            return

        # Refusals, from the protocol's to the scripted ones.
        recipient = str(address)
        reply: Reply | None = None
        if any(key not in ("NOTIFY", "ORCPT") or not b.dsn for key in params):
            reply = replies.UNKNOWN_PARAMETER
        elif has_non_ascii(address) and "SMTPUTF8" not in self.mail_params:
            reply = replies.NON_ASCII_ADDRESS
        elif b.max_recipients is not None and len(self.recipients) >= b.max_recipients:
            reply = replies.TOO_MANY_RECIPIENTS
        else:
            reply = _lookup(b.reject, recipient) or b.rcpt_reply
        if (
            reply is None
            and b.greylist
            and self.provider._greylisted(self.sender, recipient)
        ):
            reply = GREYLISTED
        if reply is not None and not reply.positive:
            await self._reply(reply, "RCPT")
            return

        self.recipients.append(recipient)
        self.rcpt_params[recipient] = params
        await self._reply(reply or replies.RECIPIENT_OK, "RCPT")

    async def _data(self, arg: str) -> None:
        refusal: Reply | None = None
        if arg:
            refusal = replies.NO_ARGUMENTS
        elif self.sender is None:
            refusal = replies.NEED_MAIL
        elif self.chunks is not None:
            refusal = replies.DATA_AFTER_BDAT
        elif not self.recipients:
            # RFC 2920 §3.1: a pipelined DATA after refused recipients.
            refusal = replies.NO_VALID_RECIPIENTS
        elif self.b.data_reply is not None:
            refusal = self.b.data_reply
            self._reset()
        if refusal is not None:
            await self._reply(refusal, "DATA")
            return

        await self._reply(replies.START_DATA, "DATA")
        content = bytearray()
        after_crlf = True  # the DATA line's own CRLF
        while True:
            line = await self._read_line(_DATA_LINE_LIMIT)
            # Only <CRLF>.<CRLF> ends the data, and only a dot after a
            # CRLF is stuffing: "\n.\n" and "\n.\r\n" are content.
            if after_crlf and line == b".\r\n":
                break
            if after_crlf and line.startswith(b"."):
                line = line[1:]
            content += line
            after_crlf = line.endswith(b"\r\n")
        await self._finish(bytes(content), chunked=False)

    async def _bdat(self, arg: str) -> None:
        words = arg.split()
        last = len(words) == 2 and words[1].upper() == "LAST"
        if not words or not words[0].isdigit() or len(words) > 1 + last:
            await self._reply(replies.BDAT_SYNTAX, "BDAT")
            return
        # The chunk follows the command at once; read it whatever the
        # answer, or its octets would be taken for commands.
        chunk = await self._read_exactly(int(words[0]))

        refusal: Reply | None = None
        if not self.b.chunking:
            refusal = replies.NOT_IMPLEMENTED
        elif self.chunk_failed:
            refusal = replies.BDAT_AFTER_FAILURE
        elif self.sender is None:
            refusal = replies.NEED_MAIL
        elif not self.recipients:
            refusal = replies.NO_VALID_RECIPIENTS
        elif self.b.data_reply is not None:
            refusal = self.b.data_reply
        if refusal is not None:
            self.chunk_failed = self.sender is not None
            await self._reply(refusal, "BDAT")
            return

        self.chunks = (self.chunks or bytearray()) + chunk
        if not last:
            reply = Reply.of(250, "2.0.0", f"{len(chunk)} octets received")
            await self._reply(reply, "BDAT")
            return
        await self._finish(bytes(self.chunks), chunked=True)

    async def _finish(self, content: bytes, *, chunked: bool) -> None:
        b = self.b
        assert self.sender is not None
        dropped = b.drop_after == END_OF_DATA
        reply: Reply | None = None
        if not dropped:
            too_big = b.size is not None and len(content) > b.size
            reply = replies.MESSAGE_TOO_BIG if too_big else b.message_reply
            if reply is None:
                number = len(self.provider.transactions) + 1
                reply = Reply.of(250, "2.0.0", f"Ok: queued as FAKE{number}")
        self.provider._record(
            Transaction(
                sender=self.sender,
                recipients=list(self.recipients),
                data=content,
                tls=self.log.tls,
                ehlo=self.log.ehlo,
                mail_params=self.mail_params,
                rcpt_params=self.rcpt_params,
                chunked=chunked,
                connection=self.index,
                reply=reply,
            )
        )
        self._reset()
        if reply is None:
            raise _Closed
        if reply.positive:
            self.messages += 1
        await self._reply(reply, END_OF_DATA)

    async def _rset(self, arg: str) -> None:
        self._reset()
        await self._reply(replies.RESET_OK, "RSET")

    async def _noop(self, arg: str) -> None:
        await self._reply(replies.NOOP_OK, "NOOP")

    async def _vrfy(self, arg: str) -> None:
        await self._reply(replies.CANNOT_VRFY, "VRFY")

    async def _quit(self, arg: str) -> None:
        await self._reply(replies.CLOSING, "QUIT")
        raise _Closed

    _handlers: Final[dict[str, Callable[[_Session, str], Awaitable[None]]]] = {
        "EHLO": _ehlo,
        "HELO": _helo,
        "STARTTLS": _starttls,
        "MAIL": _mail,
        "RCPT": _rcpt,
        "DATA": _data,
        "BDAT": _bdat,
        "RSET": _rset,
        "NOOP": _noop,
        "VRFY": _vrfy,
        "QUIT": _quit,
    }


def _lookup(table: dict[str, Reply], address: str) -> Reply | None:
    reply = table.get(address)
    if reply is None:
        lowered = address.lower()
        reply = next((r for a, r in table.items() if a.lower() == lowered), None)
    return reply

