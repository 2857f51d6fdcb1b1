"""Test helpers for SMTP: drive the core, fake the server's collaborators,
talk to a real listener, and replay transcripts against both.

The pieces, from the bytes up:

- ``parse_replies`` turns server output back into ``Reply`` values, so
  tests compare against the named constants in ``replies`` and catch any
  malformed line (it raises ``ValueError``).
- ``CoreDriver`` owns a ``ServerConnection`` and answers every event the
  way the real session does on a relay listener to a trusted client
  with default settings (``AcceptEverything``), but synchronously: feed
  it bytes, get back the replies those bytes produced. Like h11's
  ``ConnectionPair``, it keeps every event and every output byte.
- ``FakeSpool`` and ``FakeAuthenticator`` stand in for the spool and the
  password check of ``SmtpServer``; ``make_config`` and
  ``running_server`` start a real listener on 127.0.0.1 with them, and
  ``SmtpClient`` talks to it byte for byte (no client-side smarts that
  could hide a server bug).
- ``Transcript`` is a recorded conversation, replayed by ``replay_core``
  and ``replay_server``.

Transcript format
-----------------
One directive per line; blank lines and lines starting ``#`` are
comments::

    O: max_message_size=2000   an option for this conversation (below)
    C: MAIL FROM:<a@b.example> the client sends this line, CRLF appended
    C+ BDAT-chunk-bytes        the client sends exactly these bytes
    S: 250 2.1.0 Sender ok     one reply line, exact
    S: 250 2.0.0 Ok: queued *  a trailing '*' matches any rest of the line
    X: closed                  the server closes the connection here

``C:`` and ``C+`` text takes the escapes ``\\r``, ``\\n``, ``\\t``,
``\\0``, ``\\xHH`` and ``\\\\`` (a backslash), so bare line ends and NUL
bytes can be written down. Consecutive client lines go out in one write
(they are pipelined), and the replies to them are read before the next
client line is sent. Options: ``max_message_size``, ``max_recipients``
(integers), ``bare_newlines``, ``undeclared_8bit`` (as in the config),
``auth_without_tls`` and ``auth`` (booleans; ``auth`` gives the server
a ``FakeAuthenticator`` knowing ``DEFAULT_USERS``).

A transcript cannot contain STARTTLS: the core replay has no TLS layer.
TLS conversations are tested in ``tests/server/test_session.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import ssl
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from postroom import config as config_module
from postroom.config import Config
from postroom.protocol.smtp import events, replies
from postroom.protocol.smtp.events import NEED_DATA, PAUSED
from postroom.protocol.smtp.replies import Reply
from postroom.protocol.smtp.server import ServerConnection, ServerOptions

if TYPE_CHECKING:
    from postroom.queue.envelope import Envelope
    from postroom.server.smtpd import SmtpServer

LOOPBACK = "127.0.0.1"
DEFAULT_USERS: Mapping[str, str] = {"alice": "secret"}

# What the real session says where the core leaves the words to it.
GREETING = Reply.of(220, "", "localhost ESMTP Postroom")
ETRN_REFUSED = Reply.of(
    458, "4.3.0", "Unable to queue messages for node: delivery is not running"
)

Answer = Callable[[events.Event], Reply]
Observer = Callable[[ServerConnection, object], None]


# -- replies -----------------------------------------------------------

_ENHANCED = re.compile(r"([245])\.\d{1,3}\.\d{1,3}(?= |$)")


def parse_replies(data: bytes) -> list[Reply]:
    """Split server output into replies.

    Raises ValueError when a line is not ``DDD`` followed by ``' '`` or
    ``'-'``, when the lines of one reply disagree on the code, or when
    the output stops in the middle of a line or of a multi-line reply.
    An enhanced status code present on every line of a reply becomes
    ``Reply.enhanced``, as ``Reply.render`` writes it.
    """
    if data and not data.endswith(b"\r\n"):
        raise ValueError(f"output ends inside a line: {data[-40:]!r}")
    found: list[Reply] = []
    code = ""
    texts: list[str] = []
    for raw in data.split(b"\r\n")[:-1]:
        line = raw.decode("utf-8")
        if not (len(line) >= 4 and line[:3].isdigit() and line[3] in " -"):
            if not (len(line) == 3 and line.isdigit()):
                raise ValueError(f"malformed reply line {line!r}")
            line += " "
        if code and line[:3] != code:
            raise ValueError(f"reply code changes inside a reply: {line!r}")
        code = line[:3]
        texts.append(line[4:])
        if line[3] == " ":
            found.append(_reply(int(code), texts))
            code, texts = "", []
    if texts:
        raise ValueError(f"output ends inside a multi-line reply: {texts!r}")
    return found


def _reply(code: int, texts: list[str]) -> Reply:
    m = _ENHANCED.match(texts[0])
    if m is None or m.group(1) != str(code)[0]:
        return Reply(code, "", tuple(texts))
    status = m.group()
    prefix = status + " "
    if not all(t == status or t.startswith(prefix) for t in texts):
        return Reply(code, "", tuple(texts))
    return Reply(code, status, tuple(t[len(prefix) :] for t in texts))


def reply_lines(data: bytes) -> list[str]:
    """Server output as text lines, CRLF removed."""
    return [line.decode("utf-8", "replace") for line in data.split(b"\r\n")[:-1]]


def dot_stuff(content: bytes) -> bytes:
    """*content* as a conforming client sends it after DATA's 354
    (RFC 5321 §4.5.2), terminator included. *content* must use CRLF."""
    body = (b"\r\n" + content).replace(b"\r\n.", b"\r\n..")[2:]
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    return body + b".\r\n"


# -- the core, driven ----------------------------------------------------


class AcceptEverything:
    """Answers events as ``SmtpSession`` does on a relay listener, to a
    trusted client, with the default configuration: every sender and
    recipient is welcome, VRFY and EXPN get 252, ETRN 458, a message
    is "queued" under a counting id, and AUTH checks *users*.
    """

    def __init__(self, users: Mapping[str, str] = DEFAULT_USERS) -> None:
        self.users = dict(users)
        self.queued = 0

    def __call__(self, event: events.Event) -> Reply:
        if isinstance(event, events.Helo):
            return event.reply
        if isinstance(event, events.MailFrom):
            return replies.SENDER_OK
        if isinstance(event, events.RcptTo):
            return replies.RECIPIENT_OK
        if isinstance(event, events.Message):
            self.queued += 1
            return Reply.of(250, "2.0.0", f"Ok: queued as {self.queued:013d}")
        if isinstance(event, events.Auth):
            good = self.users.get(event.username) == event.password
            return replies.AUTH_OK if good else replies.AUTH_FAILED
        if isinstance(event, events.StartTls):
            return replies.READY_TLS
        if isinstance(event, (events.Vrfy, events.Expn)):
            return replies.CANNOT_VRFY
        if isinstance(event, events.Etrn):
            return ETRN_REFUSED
        raise AssertionError(f"no answer for {event!r}")  # pragma: no cover


class CoreDriver:
    """A ``ServerConnection`` with a synchronous, scripted driver.

    *answer* decides the reply to each answer-required event (default
    ``AcceptEverything()``); it may be any callable. With *auto_tls*, a
    positive answer to STARTTLS is followed at once by
    ``tls_started()``, as if the handshake had succeeded; without it the
    core stays in TLS_PENDING until the test calls it. *observer* is
    called with the connection and the result after every
    ``next_event`` and every ``respond``, for invariant checks.

    ``events`` holds every event so far, ``last_events`` those of the
    last ``send``/``eof``, ``output`` every byte the core wrote.
    """

    def __init__(
        self,
        options: ServerOptions | None = None,
        *,
        answer: Answer | None = None,
        greeting: Reply | None = GREETING,
        auto_tls: bool = True,
        observer: Observer | None = None,
    ) -> None:
        self.conn = ServerConnection(
            options if options is not None else ServerOptions()
        )
        self.answer: Answer = answer if answer is not None else AcceptEverything()
        self.auto_tls = auto_tls
        self.observer = observer
        self.events: list[events.Event] = []
        self.last_events: list[events.Event] = []
        self.output = bytearray()
        self.greeting: list[Reply] = []
        if greeting is not None:
            self.conn.greet(greeting)
            self.greeting = self._collect()

    @property
    def state(self) -> Any:
        return self.conn.state

    @property
    def closed(self) -> bool:
        """True once the core has ended the conversation by itself."""
        return any(isinstance(e, events.Closed) and not e.by_peer for e in self.events)

    def send(self, data: bytes | str) -> list[Reply]:
        """Feed *data* (str is UTF-8 encoded, nothing appended); return
        the replies it produced."""
        self.conn.receive_data(data.encode() if isinstance(data, str) else data)
        return self._run()

    def command(self, line: str) -> list[Reply]:
        """Send one command line, CRLF appended."""
        return self.send(line.encode() + b"\r\n")

    def eof(self) -> list[Reply]:
        """The client closes its side."""
        self.conn.receive_data(b"")
        return self._run()

    def _run(self) -> list[Reply]:
        self.last_events = []
        while True:
            event = self.conn.next_event()
            if self.observer is not None:
                self.observer(self.conn, event)
            if event is NEED_DATA:
                break
            if event is PAUSED:  # pragma: no cover - we always answer
                raise AssertionError("core paused although every event was answered")
            assert not isinstance(event, events._Sentinel)
            self.events.append(event)
            self.last_events.append(event)
            if isinstance(event, events.Closed):
                continue
            reply = self.answer(event)
            self.conn.respond(reply)
            if self.observer is not None:
                self.observer(self.conn, reply)
            started = isinstance(event, events.StartTls) and reply.code == 220
            if started and self.auto_tls:
                self.conn.tls_started()
        return self._collect()

    def _collect(self) -> list[Reply]:
        out = self.conn.data_to_send()
        self.output += out
        return parse_replies(out)


# -- fakes for the asyncio server --------------------------------------


class FakeSpool:
    """Takes the place of ``queue.spool.Spool`` in ``SmtpServer``.

    ``commits`` lists every (envelope, content) committed. With *error*
    set, ``commit`` raises it instead (a ``SpoolError`` is what the real
    spool raises). Clearing ``gate`` holds every commit until it is set
    again; ``entered`` is set when a commit starts waiting, so a test
    can act while a message is being stored.
    """

    def __init__(self, *, error: Exception | None = None) -> None:
        self.commits: list[tuple[Envelope, bytes]] = []
        self.error = error
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()

    def submit(self, envelope: Envelope, content: bytes) -> asyncio.Future[None]:
        """The session's entry point (see ``Spool.submit``)."""
        return asyncio.ensure_future(self.commit(envelope, content))

    async def commit(self, envelope: Envelope, content: bytes) -> None:
        self.entered.set()
        await self.gate.wait()
        if self.error is not None:
            raise self.error
        self.commits.append((envelope, content))

    @property
    def contents(self) -> list[bytes]:
        return [content for _, content in self.commits]


class FakeAuthenticator:
    """Takes the place of ``server.auth.Authenticator``: checks against a
    dict, records the usernames tried (never passwords), and raises
    *error* instead when it is set (``AuthError`` means "could not
    check")."""

    def __init__(
        self,
        users: Mapping[str, str] = DEFAULT_USERS,
        *,
        error: Exception | None = None,
    ) -> None:
        self.users = dict(users)
        self.error = error
        self.tried: list[str] = []

    async def verify(self, username: str, password: str) -> bool:
        self.tried.append(username)
        if self.error is not None:
            raise self.error
        return self.users.get(username) == password


def make_config(
    data_dir: str | os.PathLike[str] | None = None, **smtp: object
) -> Config:
    """A Config with one relay listener on 127.0.0.1, port chosen by the
    kernel, a short shutdown grace and AUTH delay, and *smtp* settings
    given by their names in ``[smtp]`` (``max_recipients=2``)."""
    environ = {
        "POSTROOM_SMTP__LISTENERS": f"relay={LOOPBACK}:0",
        "POSTROOM_SMTP__SHUTDOWN_GRACE": "2",
        "POSTROOM_SMTP__AUTH_FAILURE_DELAY": "0.01",
    }
    if data_dir is not None:
        environ["POSTROOM_DATA_DIR"] = str(data_dir)
    for key, value in smtp.items():
        environ[f"POSTROOM_SMTP__{key.upper()}"] = _env_text(value)
    return config_module.load(environ=environ)


def _env_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


@contextlib.asynccontextmanager
async def running_server(
    config: Config,
    spool: Any = None,
    *,
    authenticator: Any = None,
    tls_context: ssl.SSLContext | None = None,
) -> AsyncIterator[SmtpServer]:
    """Start an ``SmtpServer`` (with a ``FakeSpool`` unless given one),
    yield it, and stop it gracefully on the way out."""
    from postroom.server.smtpd import SmtpServer

    # The fakes satisfy SmtpServer by duck typing, not by type.
    store: Any = spool if spool is not None else FakeSpool()
    server = SmtpServer(
        config, store, authenticator=authenticator, tls_context=tls_context
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class SmtpClient:
    """A byte-exact SMTP client on asyncio streams. Every read gives up
    after *timeout* seconds with ``TimeoutError``, so a server that
    fails to answer fails the test instead of hanging it."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout

    @classmethod
    async def connect(
        cls, port: int, host: str = LOOPBACK, *, timeout: float = 5.0
    ) -> SmtpClient:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer, timeout)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def command(self, line: str) -> Reply:
        """Send *line* with CRLF and read the one reply to it."""
        await self.send(line.encode() + b"\r\n")
        return await self.read_reply()

    async def read_line(self) -> str | None:
        """One reply line without its CRLF, or None at end of file."""
        try:
            raw = await asyncio.wait_for(self.reader.readuntil(b"\r\n"), self.timeout)
        except asyncio.IncompleteReadError:
            return None
        return raw[:-2].decode("utf-8", "replace")

    async def read_reply(self) -> Reply:
        """One complete reply; ConnectionError if the server hangs up
        before finishing it."""
        lines: list[bytes] = []
        while True:
            line = await self.read_line()
            if line is None:
                raise ConnectionError(f"connection closed; got {lines!r}")
            lines.append(line.encode())
            if line[3:4] != "-":
                break
        (reply,) = parse_replies(b"".join(x + b"\r\n" for x in lines))
        return reply

    async def read_replies(self, count: int) -> list[Reply]:
        return [await self.read_reply() for _ in range(count)]

    async def read_some(self) -> bytes:
        """Whatever one read returns (b"" at end of file)."""
        return await asyncio.wait_for(self.reader.read(65536), self.timeout)

    async def read_until_eof(self) -> bytes:
        """Everything up to the server's close."""
        return await asyncio.wait_for(self.reader.read(), self.timeout)

    async def starttls(
        self, context: ssl.SSLContext, hostname: str = "localhost"
    ) -> None:
        await self.writer.start_tls(context, server_hostname=hostname)

    def half_close(self) -> None:
        """Shut our sending side down (TCP FIN), keep reading."""
        self.writer.write_eof()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await self.writer.wait_closed()


# -- transcripts ----------------------------------------------------------

_ESCAPE = re.compile(rb"\\(x[0-9A-Fa-f]{2}|.)")
_ESCAPES = {b"r": b"\r", b"n": b"\n", b"t": b"\t", b"0": b"\0", b"\\": b"\\"}

_OPTIONS: dict[str, type] = {
    "max_message_size": int,
    "max_recipients": int,
    "bare_newlines": str,
    "undeclared_8bit": str,
    "auth_without_tls": bool,
    "auth": bool,
}


def unescape(text: str) -> bytes:
    """Transcript text to bytes: UTF-8, with the escapes listed above.
    Raises ValueError on an unknown escape."""

    def one(m: re.Match[bytes]) -> bytes:
        code = m.group(1)
        if code.startswith(b"x") and len(code) == 3:
            return bytes([int(code[1:], 16)])
        if code in _ESCAPES:
            return _ESCAPES[code]
        raise ValueError(f"unknown escape \\{code.decode()}")

    return _ESCAPE.sub(one, text.encode("utf-8"))


@dataclass(frozen=True)
class Step:
    """One directive: ``send`` (``data``), ``expect`` (``pattern``) or
    ``closed``; ``lineno`` points back into the file."""

    kind: str
    lineno: int
    data: bytes = b""
    pattern: str = ""

    def matches(self, line: str) -> bool:
        if self.pattern.endswith("*"):
            return line.startswith(self.pattern[:-1])
        return line == self.pattern


class TranscriptMismatch(AssertionError):
    """The server did not say what the transcript says."""


@dataclass
class Transcript:
    name: str
    steps: list[Step]
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, name: str = "<transcript>") -> Transcript:
        """Read the format above; ValueError names the bad line."""
        steps: list[Step] = []
        options: dict[str, Any] = {}
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            if line in ("C:", "S:"):
                line += " "  # An empty line; editors strip the space.
            tag, rest = line[:3], line[3:]
            try:
                if tag == "C: ":
                    steps.append(Step("send", n, data=unescape(rest) + b"\r\n"))
                elif tag == "C+ ":
                    steps.append(Step("send", n, data=unescape(rest)))
                elif tag == "S: ":
                    steps.append(Step("expect", n, pattern=rest))
                elif line.strip() == "X: closed":
                    steps.append(Step("closed", n))
                elif tag == "O: ":
                    key, _, value = rest.partition("=")
                    options[key.strip()] = _option(key.strip(), value.strip())
                else:
                    raise ValueError("unknown directive")
            except ValueError as e:
                raise ValueError(f"{name}:{n}: {e}: {line!r}") from None
        return cls(name, steps, options)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Transcript:
        path = Path(path)
        return cls.parse(path.read_text(encoding="utf-8"), path.name)

    @property
    def client_bytes(self) -> bytes:
        return b"".join(s.data for s in self.steps if s.kind == "send")

    @property
    def expects_close(self) -> bool:
        return any(s.kind == "closed" for s in self.steps)

    def exchanges(self) -> list[tuple[bytes, int]]:
        """(bytes to write in one go, reply lines to read after them)."""
        out: list[tuple[bytes, int]] = []
        data, count = b"", 0
        for step in self.steps:
            if step.kind == "send":
                if count:
                    out.append((data, count))
                    data, count = b"", 0
                data += step.data
            elif step.kind == "expect":
                count += 1
        if data or count:
            out.append((data, count))
        return out

    def core_options(self) -> ServerOptions:
        o = self.options
        defaults = ServerOptions()
        return ServerOptions(
            max_message_size=o.get("max_message_size", defaults.max_message_size),
            max_recipients=o.get("max_recipients", defaults.max_recipients),
            bare_newlines=o.get("bare_newlines", defaults.bare_newlines),
            undeclared_8bit=o.get("undeclared_8bit", defaults.undeclared_8bit),
            auth_without_tls=o.get("auth_without_tls", False),
            auth_enabled=o.get("auth", False),
        )

    def config_settings(self) -> dict[str, object]:
        """The options as ``make_config`` keyword arguments."""
        return {k: v for k, v in self.options.items() if k != "auth"}

    def check(self, lines: list[str], closed: bool | None) -> None:
        """Raise TranscriptMismatch unless *lines* are the expected reply
        lines and, where the transcript says so, the server closed."""
        expected = [s for s in self.steps if s.kind == "expect"]
        good = len(lines) == len(expected) and all(
            s.matches(line) for s, line in zip(expected, lines, strict=True)
        )
        if good and (closed is None or closed == self.expects_close):
            return
        report = [f"{self.name}: the server's replies differ"]
        for i in range(max(len(lines), len(expected))):
            want = expected[i] if i < len(expected) else None
            got = lines[i] if i < len(lines) else "<nothing>"
            mark = "  " if want is not None and want.matches(got) else "!!"
            where = f"line {want.lineno:3}" if want else "extra   "
            report.append(f"{mark} {where}: want {want.pattern if want else '-'!r}")
            report.append(f"{'':14}got  {got!r}")
        if closed is not None and closed != self.expects_close:
            report.append(f"!! closed: want {self.expects_close}, got {closed}")
        raise TranscriptMismatch("\n".join(report))


def _option(key: str, value: str) -> Any:
    kind = _OPTIONS.get(key)
    if kind is None:
        raise ValueError(f"unknown option {key!r}")
    if kind is bool:
        if value not in ("true", "false"):
            raise ValueError(f"{key} must be true or false")
        return value == "true"
    return kind(value)


def load_transcripts(directory: str | os.PathLike[str]) -> list[Transcript]:
    """Every ``*.txt`` transcript in *directory*, sorted by name."""
    return [Transcript.load(p) for p in sorted(Path(directory).glob("*.txt"))]


@dataclass
class Replay:
    lines: list[str]
    closed: bool | None
    events: list[events.Event] = field(default_factory=list)


def replay_core(
    transcript: Transcript, chunks: Iterable[bytes] | None = None
) -> Replay:
    """Play the client's side into a fresh core. By default each run of
    client lines is one ``receive_data``; *chunks* overrides that (the
    bytes must add up to ``transcript.client_bytes``). The end of file
    follows unless the core closed first."""
    users = DEFAULT_USERS if transcript.options.get("auth") else {}
    driver = CoreDriver(transcript.core_options(), answer=AcceptEverything(users))
    if chunks is None:
        chunks = [data for data, _ in transcript.exchanges() if data]
    for chunk in chunks:
        driver.send(chunk)
    if not driver.closed:
        driver.eof()
    return Replay(reply_lines(bytes(driver.output)), driver.closed, driver.events)


async def replay_server(
    transcript: Transcript, port: int, host: str = LOOPBACK, timeout: float = 5.0
) -> Replay:
    """Play the client's side to a listener: each run of client lines in
    one write, then read as many reply lines as the transcript expects
    (fewer if the server closes or falls silent for *timeout* seconds).
    Where the transcript says ``X: closed``, read on to end of file."""
    client = await SmtpClient.connect(port, host, timeout=timeout)
    lines: list[str] = []
    closed: bool | None = None
    try:
        for data, count in transcript.exchanges():
            if data:
                await client.send(data)
            for _ in range(count):
                line = await client.read_line()
                if line is None:
                    break
                lines.append(line)
        if transcript.expects_close:
            rest = await client.read_until_eof()
            lines += reply_lines(rest)
            closed = True
    except (TimeoutError, OSError):
        closed = False if transcript.expects_close else None
    finally:
        await client.close()
    return Replay(lines, closed)
