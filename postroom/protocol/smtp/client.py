"""The client side of SMTP as a sans-I/O state machine.

Theory of operation
-------------------
The driver opens a connection, then loops: write ``data_to_send()``,
read, feed what it read to ``receive_data`` (``b""`` at end of file) and
call ``next_event`` until it returns ``NEED_DATA``. The core never
blocks, sleeps, reads a clock or touches a socket; timeouts belong to the
driver, which reports one with ``abort(reply)``.

Each command method queues bytes and notes which replies it waits for.
One *operation* is outstanding at a time, and each ends in exactly one
event holding the server's answer::

    (connection opened)   -> Greeting
    ehlo() / helo()       -> EhloDone
    starttls()            -> StartTlsDone
    auth()                -> AuthDone
    send_transaction()    -> TransactionDone
    rset()                -> RsetDone
    quit()                -> QuitDone

The conversation ends with one ``Closed``. States (``State``)::

    GREETING --greeting--> INITIAL --EHLO/HELO 2xx--> READY <--> BUSY
                              ^                         |
                              +---- tls_started() -- TLS_PENDING
                                                    (STARTTLS got 220)
    any state --421 / EOF / malformed reply / abort() / QUIT--> CLOSED

Rules this file keeps, so that no driver has to:

* Replies answer commands strictly in order (RFC 2920 §3.1), so each
  reply is matched to the oldest command still waiting. A reply nobody
  waits for is a protocol error, except 421, which a server may send at
  any time before it hangs up (RFC 5321 §3.8).
* Every operation gets its event even when the connection dies under
  it: a 421, the end of file, a malformed reply or ``abort()`` stands in
  for every reply still awaited (EOF becomes a made-up ``421 4.4.2``, a
  malformed reply ``421 4.5.0``). The driver thus has one path for "the
  server said no" and "the server went away".
* Replies are bounded: a line may hold ``REPLY_LINE_LIMIT`` octets and a
  reply ``REPLY_LINES_LIMIT`` lines (RFC 5321 §4.5.3.1.5 says 512 octets;
  we allow more because real servers exceed it). Past that the server
  is hostile or broken, and we stop reading rather than buffer.
* PIPELINING (RFC 2920): when offered, MAIL, every RCPT and DATA go out
  in one write. Without it, each command waits for the previous reply.
  When no recipient is accepted the DATA text is never sent: a
  pipelined DATA that still gets 354 is closed with a lone "." (RFC 2920
  §3.1 asks exactly this). With CHUNKING, a message of up to
  ``PIPELINED_BDAT_LIMIT`` octets goes out as ``BDAT n LAST`` in the same
  write as MAIL and RCPT (RFC 3030 §4.2 allows BDAT in a pipelined
  group): one round trip per message instead of two. Its data cannot be
  taken back, so if every recipient is refused those octets were sent
  for nothing (the server reads and drops a refused chunk, RFC 3030
  §2); larger messages wait for the RCPT replies first.
* DATA content is dot-stuffed, its line ends made CRLF (a bare LF or CR
  could otherwise let a message end early at a lax next hop: SMTP
  smuggling), a final CRLF added when missing, then ``.<CRLF>``
  (RFC 5321 §4.5.2). BDAT sends the octets as they are (RFC 3030).
* STARTTLS (RFC 3207 §4.2): after the 220, whatever is buffered or
  arrives before ``tls_started()`` is dropped, since a man in the middle
  could have injected it into the cleartext; after the handshake the
  capabilities are forgotten and EHLO must come again.
* Parameters are only sent for extensions the server announced:
  DSN's RET, ENVID, NOTIFY and ORCPT are left out without DSN (RFC 3461
  §4); asking for BODY=8BITMIME, SMTPUTF8 or REQUIRETLS that the server
  lacks is a ``LocalProtocolError``: downgrading or bouncing is the
  driver's policy, not a protocol detail.

The transaction's outcome per recipient (``TransactionDone.per_recipient``)
is the MAIL reply when MAIL failed, else the recipient's RCPT reply when
that failed, else the final reply to the message text.
"""

from __future__ import annotations

import base64
import enum
import re
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from postroom.errors import LocalProtocolError
from postroom.protocol.smtp import content as content_rules
from postroom.protocol.smtp.events import NEED_DATA, _Sentinel
from postroom.protocol.smtp.replies import Reply
from postroom.protocol.smtp.syntax import encode_xtext

__all__ = [
    "NEED_DATA",
    "AuthDone",
    "Capabilities",
    "ClientConnection",
    "Closed",
    "EhloDone",
    "Greeting",
    "MailRequest",
    "QuitDone",
    "RcptRequest",
    "ReplyReader",
    "RsetDone",
    "StartTlsDone",
    "State",
    "TransactionDone",
]

REPLY_LINE_LIMIT = 4096
REPLY_LINES_LIMIT = 128

# RFC 3463 §2: class.subject.detail, at the start of the text.
_ENHANCED = re.compile(r"([245])\.[0-9]{1,3}\.[0-9]{1,3}(?= |$)")
# Anything that could end a command line early or hide in a log.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _ok(reply: Reply) -> bool:
    return 200 <= reply.code < 300


# ----------------------------------------------------------------------
# Replies


class BadReply(Exception):
    """The server sent something that is not an SMTP reply."""


class ReplyReader:
    """Assembles replies from bytes: ``feed`` then ``next_reply`` until
    it returns None. Raises ``BadReply`` on a malformed or oversized
    reply; after that the stream cannot be trusted and the reader must
    be dropped.

    Liberal where it costs nothing: a bare LF ends a line like CRLF, a
    line of just the three digits is a complete final line, and text
    that is not UTF-8 is decoded with replacement characters.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._code = 0
        self._texts: list[str] = []

    def feed(self, data: bytes) -> None:
        self._buf += data

    def clear(self) -> None:
        self._buf.clear()
        self._code = 0
        self._texts = []

    def next_reply(self) -> Reply | None:
        while True:
            end = self._buf.find(b"\n")
            if end < 0:
                if len(self._buf) > REPLY_LINE_LIMIT:
                    raise BadReply("reply line too long")
                return None
            if end + 1 > REPLY_LINE_LIMIT:
                raise BadReply("reply line too long")
            raw = bytes(self._buf[:end]).removesuffix(b"\r")
            del self._buf[: end + 1]
            code, last, text = _split_line(raw)
            if self._texts and code != self._code:
                raise BadReply("reply code changed inside a multi-line reply")
            self._code = code
            self._texts.append(text)
            if len(self._texts) > REPLY_LINES_LIMIT:
                raise BadReply("too many lines in one reply")
            if last:
                reply = make_reply(code, self._texts)
                self._code, self._texts = 0, []
                return reply


def _split_line(raw: bytes) -> tuple[int, bool, str]:
    # RFC 5321 §4.2: Reply-code [ SP / "-" textstring ] CRLF, where the
    # code's first digit is 2 to 5.
    head = raw[:3]
    if len(head) < 3 or not head.isdigit() or head[0] not in b"2345":
        shown = raw[:40].decode("ascii", "replace")
        raise BadReply(f"malformed reply line {shown!r}")
    if len(raw) == 3:
        return int(head), True, ""
    if raw[3:4] not in (b" ", b"-"):
        raise BadReply("reply code not followed by a space or a hyphen")
    return int(head), raw[3:4] == b" ", raw[4:].decode("utf-8", "replace")


def make_reply(code: int, texts: Sequence[str]) -> Reply:
    """A ``Reply`` from its code and line texts, with the enhanced status
    code taken out of the text when the first line starts with a
    well-formed one of the same class (RFC 3463; RFC 2034 §4 puts it on
    every line, so it is removed wherever a line repeats it). We take it
    whether or not the server announced ENHANCEDSTATUSCODES: a code that
    parses and agrees with the basic code means what it says."""
    m = _ENHANCED.match(texts[0]) if code // 100 != 3 else None
    if m is None or int(m.group(1)) != code // 100:
        return Reply(code, "", tuple(texts))
    status = m.group()
    prefix = status + " "
    lines = tuple(
        t[len(prefix) :] if t.startswith(prefix) else "" if t == status else t
        for t in texts
    )
    return Reply(code, status, lines)


# ----------------------------------------------------------------------
# Capabilities


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a server announced in its EHLO reply (RFC 5321 §4.1.1.1).

    ``esmtp`` is False after HELO, and then everything else is off.
    ``size`` is None without SIZE, else the announced limit in octets,
    0 meaning "no fixed limit" (RFC 1870 §4). ``auth`` lists the SASL
    mechanisms in upper case. ``keywords`` keeps every line's keyword,
    upper case and in order, for logs and for extensions not named here.
    """

    esmtp: bool = False
    pipelining: bool = False
    size: int | None = None
    eightbitmime: bool = False
    smtputf8: bool = False
    chunking: bool = False
    binarymime: bool = False
    dsn: bool = False
    starttls: bool = False
    enhancedstatuscodes: bool = False
    requiretls: bool = False
    auth: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()

    @classmethod
    def from_ehlo(cls, reply: Reply) -> Capabilities:
        """Parse a 250 EHLO reply; its first line is the greeting."""
        flags: dict[str, bool] = {}
        size: int | None = None
        auth: list[str] = []
        keywords: list[str] = []
        for line in reply.lines[1:]:
            # "AUTH=PLAIN LOGIN" is a pre-RFC form some servers still send.
            if line[:5].upper() == "AUTH=":
                line = "AUTH " + line[5:]
            words = line.split()
            if not words:
                continue
            keyword = words[0].upper()
            keywords.append(keyword)
            if keyword == "SIZE":
                value = words[1] if len(words) > 1 else "0"
                size = int(value) if value.isdigit() and len(value) < 19 else 0
            elif keyword == "AUTH":
                auth += [w.upper() for w in words[1:] if w.upper() not in auth]
            elif keyword in _FLAGS:
                flags[_FLAGS[keyword]] = True
        return cls(
            esmtp=True, size=size, auth=tuple(auth), keywords=tuple(keywords), **flags
        )


_FLAGS = {
    "PIPELINING": "pipelining",
    "8BITMIME": "eightbitmime",
    "SMTPUTF8": "smtputf8",
    "CHUNKING": "chunking",
    "BINARYMIME": "binarymime",
    "DSN": "dsn",
    "STARTTLS": "starttls",
    "ENHANCEDSTATUSCODES": "enhancedstatuscodes",
    "REQUIRETLS": "requiretls",
}


# ----------------------------------------------------------------------
# Commands


@dataclass(frozen=True, slots=True)
class MailRequest:
    """MAIL FROM and what we would like to say with it.

    ``sender`` is "" for the null reverse-path. ``size`` is sent only
    when the server has SIZE; ``ret`` and ``envid`` (decoded; we encode
    it as xtext) only with DSN. ``body`` is "", "7BIT", "8BITMIME" or
    "BINARYMIME".
    """

    sender: str
    size: int | None = None
    body: str = ""
    smtputf8: bool = False
    ret: str | None = None
    envid: str | None = None
    requiretls: bool = False


@dataclass(frozen=True, slots=True)
class RcptRequest:
    """RCPT TO and its DSN request, as ``Recipient`` stores them:
    ``notify`` None for none given, () for NEVER; ``orcpt`` decoded,
    ``"rfc822;user@example.org"``. Both are sent only with DSN."""

    address: str
    notify: tuple[str, ...] | None = None
    orcpt: str | None = None


def _path(address: str, caps: Capabilities, smtputf8: bool) -> str:
    if _CONTROL.search(address) or "<" in address or ">" in address:
        raise LocalProtocolError(f"address with forbidden characters: {address!r}")
    if not address.isascii() and not (smtputf8 and caps.smtputf8):
        raise LocalProtocolError(f"non-ASCII address without SMTPUTF8: {address!r}")
    return f"<{address}>"


def mail_command(mail: MailRequest, caps: Capabilities) -> bytes:
    """The MAIL FROM line for *mail*, given what the server offers."""
    params: list[str] = []
    if mail.size is not None and caps.size is not None:
        params.append(f"SIZE={mail.size}")
    body = mail.body.upper()
    if body == "BINARYMIME":
        if not (caps.binarymime and caps.chunking):
            raise LocalProtocolError("BODY=BINARYMIME needs BINARYMIME and CHUNKING")
        params.append("BODY=BINARYMIME")
    elif body == "8BITMIME":
        if not caps.eightbitmime:
            raise LocalProtocolError("BODY=8BITMIME but the server lacks 8BITMIME")
        params.append("BODY=8BITMIME")
    elif body == "7BIT" and caps.eightbitmime:
        params.append("BODY=7BIT")
    if mail.smtputf8:
        if not caps.smtputf8:
            raise LocalProtocolError("SMTPUTF8 but the server lacks it")
        params.append("SMTPUTF8")
    if caps.dsn and mail.ret in ("FULL", "HDRS"):
        params.append(f"RET={mail.ret}")
    if caps.dsn and mail.envid:
        params.append(f"ENVID={encode_xtext(mail.envid)}")
    if mail.requiretls:
        if not caps.requiretls:
            raise LocalProtocolError("REQUIRETLS but the server lacks it")
        params.append("REQUIRETLS")
    path = _path(mail.sender, caps, mail.smtputf8)
    return _line(f"MAIL FROM:{path}", params)


def rcpt_command(rcpt: RcptRequest, caps: Capabilities, smtputf8: bool) -> bytes:
    """The RCPT TO line for *rcpt*; *smtputf8* says MAIL asked for it."""
    params: list[str] = []
    if caps.dsn and rcpt.notify is not None:
        notify = [n.upper() for n in rcpt.notify]
        if not set(notify) <= {"SUCCESS", "FAILURE", "DELAY"}:
            raise LocalProtocolError(f"bad NOTIFY value {rcpt.notify!r}")
        params.append("NOTIFY=" + (",".join(notify) or "NEVER"))
    if caps.dsn and rcpt.orcpt:
        kind, semi, address = rcpt.orcpt.partition(";")
        if semi and kind and address and not _CONTROL.search(kind + address):
            # RFC 3461 §4.2: addr-type ";" xtext.
            params.append(f"ORCPT={kind};{encode_xtext(address)}")
    return _line(f"RCPT TO:{_path(rcpt.address, caps, smtputf8)}", params)


def _line(command: str, params: Sequence[str]) -> bytes:
    return (" ".join([command, *params]) + "\r\n").encode("utf-8")


def _bdat_command(content: bytes) -> bytes:
    return b"BDAT %d LAST\r\n" % len(content) + content


def dot_stuff(content: bytes) -> bytes:
    """*content* as it goes after DATA's 354, end marker included
    (RFC 5321 §4.5.2): lines ends made CRLF, a missing final CRLF added,
    a "." doubled at the start of every line."""
    text = content_rules.normalize_newlines(content)
    if text and not text.endswith(b"\r\n"):
        text += b"\r\n"
    stuffed = (b"\r\n" + text).replace(b"\r\n.", b"\r\n..")[2:]
    return stuffed + b".\r\n"


# ----------------------------------------------------------------------
# Events


@dataclass(frozen=True, slots=True)
class Greeting:
    """The server's first reply: 220 to go on; 554 means "no service
    here" (RFC 5321 §3.1) and the driver should QUIT; 421 closes."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class EhloDone:
    """EHLO or HELO answered. ``capabilities`` are empty unless it
    succeeded; after a 5xx to EHLO the driver may try HELO."""

    reply: Reply
    capabilities: Capabilities
    extended: bool


@dataclass(frozen=True, slots=True)
class StartTlsDone:
    """STARTTLS answered. When ``ready``, do the handshake now and call
    ``tls_started()``; otherwise the session goes on in cleartext."""

    reply: Reply

    @property
    def ready(self) -> bool:
        return self.reply.code == 220


@dataclass(frozen=True, slots=True)
class AuthDone:
    """AUTH finished: 235 means authenticated (RFC 4954 §6)."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class TransactionDone:
    """A mail transaction finished, one way or another.

    ``mail_reply`` answered MAIL; ``rcpt_replies`` has one reply per
    recipient in order; ``data_reply`` is the final reply to the message
    text (DATA's end or BDAT LAST), or the refusal of DATA itself, or
    None when no text was sent because nobody was accepted.
    """

    mail_reply: Reply
    rcpt_replies: tuple[Reply, ...]
    data_reply: Reply | None

    @property
    def per_recipient(self) -> tuple[Reply, ...]:
        """The reply that decides each recipient, in order."""
        if not _ok(self.mail_reply):
            return (self.mail_reply,) * len(self.rcpt_replies)
        return tuple(
            r if not _ok(r) or self.data_reply is None else self.data_reply
            for r in self.rcpt_replies
        )


@dataclass(frozen=True, slots=True)
class RsetDone:
    reply: Reply


@dataclass(frozen=True, slots=True)
class QuitDone:
    reply: Reply


@dataclass(frozen=True, slots=True)
class Closed:
    """The conversation is over; close the socket. ``reply`` says why:
    the server's 221 or 421, or one we made up (4.4.2 connection lost,
    4.5.0 protocol error, or what the driver passed to ``abort``)."""

    reply: Reply


Event = (
    Greeting
    | EhloDone
    | StartTlsDone
    | AuthDone
    | TransactionDone
    | RsetDone
    | QuitDone
    | Closed
)


# ----------------------------------------------------------------------
# The connection


class State(enum.Enum):
    GREETING = enum.auto()
    INITIAL = enum.auto()
    READY = enum.auto()
    BUSY = enum.auto()
    TLS_PENDING = enum.auto()
    CLOSED = enum.auto()


class _Await(enum.Enum):
    """What an awaited reply answers; the value names it in made-up
    replies ("... waiting for the reply to RCPT")."""

    GREETING = "greeting"
    EHLO = "EHLO"
    HELO = "HELO"
    STARTTLS = "STARTTLS"
    AUTH = "AUTH"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    DOT = "end of data"
    EMPTY_DOT = "empty end of data"
    BDAT = "BDAT"
    RSET = "RSET"
    QUIT = "QUIT"


_DATA_END = (_Await.DOT, _Await.BDAT)

# Messages up to this size are sent with BDAT in the pipelined group
# (see the module docstring); beyond it, a refused group would waste too
# much bandwidth.
PIPELINED_BDAT_LIMIT = 256 * 1024


@dataclass
class _Transaction:
    mail: MailRequest
    rcpts: tuple[bytes, ...]
    content: bytes
    bdat: bool
    pipelined: bool
    bdat_sent: bool = False
    mail_reply: Reply | None = None
    rcpt_replies: list[Reply] = field(default_factory=list)
    data_reply: Reply | None = None

    @property
    def mail_ok(self) -> bool:
        return self.mail_reply is not None and _ok(self.mail_reply)

    @property
    def accepted(self) -> bool:
        return self.mail_ok and any(_ok(r) for r in self.rcpt_replies)


class ClientConnection:
    """One SMTP conversation, seen from the client."""

    def __init__(self) -> None:
        self.state = State.GREETING
        self.capabilities = Capabilities()
        # The server may still be inside a mail transaction we began
        # (MAIL accepted, no message completed): RSET before the next.
        self.needs_reset = False
        self._reader = ReplyReader()
        self._out: list[bytes] = []
        self._events: deque[Event] = deque()
        self._expect: deque[_Await] = deque([_Await.GREETING])
        self._tx: _Transaction | None = None
        self._auth_steps: list[bytes] = []
        self._eof = False

    # ------------------------------------------------------------------
    # Driver interface

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the server; ``b""`` means end of file."""
        if self.state in (State.CLOSED, State.TLS_PENDING):
            return  # Nothing more to read, or cleartext after STARTTLS.
        if data:
            self._reader.feed(data)
        else:
            self._eof = True

    def data_to_send(self) -> bytes:
        """Everything queued for the server, in one piece."""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def next_event(self) -> Event | _Sentinel:
        """The next event, or ``NEED_DATA`` when more input is needed
        (or, once ``Closed`` was returned, forever after)."""
        while not self._events:
            if self.state in (State.CLOSED, State.TLS_PENDING):
                return NEED_DATA
            try:
                reply = self._reader.next_reply()
            except BadReply as e:
                self._shut(Reply.of(421, "4.5.0", f"Protocol error: {e}"))
                continue
            if reply is not None:
                self._dispatch(reply)
            elif self._eof:
                self._shut(self._lost())
            else:
                return NEED_DATA
        return self._events.popleft()

    def abort(self, reply: Reply) -> None:
        """Give up on the connection (a timeout, a failed write): every
        awaited reply becomes *reply*, then ``Closed(reply)`` follows."""
        if self.state is not State.CLOSED:
            self._shut(reply)

    def tls_started(self) -> None:
        """The driver finished the TLS handshake after STARTTLS's 220."""
        if self.state is not State.TLS_PENDING:
            raise LocalProtocolError("tls_started() without STARTTLS")
        self.state = State.INITIAL
        self.capabilities = Capabilities()
        self._reader.clear()

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def ready(self) -> bool:
        """Idle after a successful EHLO/HELO: a command may be sent."""
        return self.state is State.READY

    @property
    def awaiting(self) -> str:
        """What the oldest awaited reply answers ("" if none), for the
        driver's choice of timeout and its messages."""
        return self._expect[0].value if self._expect else ""

    @property
    def awaiting_data_end(self) -> bool:
        """The message text is out and its final reply awaited: the
        slow step (RFC 5321 §4.5.3.2.6 gives it 10 minutes)."""
        return bool(self._expect) and self._expect[0] in _DATA_END

    # ------------------------------------------------------------------
    # Commands

    def ehlo(self, name: str) -> None:
        self._hello("EHLO", name, _Await.EHLO)

    def helo(self, name: str) -> None:
        self._hello("HELO", name, _Await.HELO)

    def _hello(self, verb: str, name: str, kind: _Await) -> None:
        self._need(State.INITIAL, State.READY)
        if not name or " " in name or _CONTROL.search(name):
            raise LocalProtocolError(f"bad {verb} name {name!r}")
        self._command(f"{verb} {name}\r\n".encode(), kind)

    def starttls(self) -> None:
        self._need(State.READY)
        if not self.capabilities.starttls:
            raise LocalProtocolError("STARTTLS was not offered")
        self._command(b"STARTTLS\r\n", _Await.STARTTLS)

    def auth(self, username: str, password: str) -> None:
        """AUTH PLAIN with an initial response (RFC 4616, RFC 4954 §4),
        or LOGIN when PLAIN is not offered."""
        self._need(State.READY)
        offered = self.capabilities.auth
        if "PLAIN" in offered:
            token = _b64(f"\0{username}\0{password}")
            self._command(b"AUTH PLAIN " + token + b"\r\n", _Await.AUTH)
        elif "LOGIN" in offered:
            self._auth_steps = [_b64(username), _b64(password)]
            self._command(b"AUTH LOGIN\r\n", _Await.AUTH)
        else:
            raise LocalProtocolError("neither AUTH PLAIN nor LOGIN was offered")

    def send_transaction(
        self,
        mail: MailRequest,
        recipients: Sequence[RcptRequest],
        content: bytes,
        *,
        use_bdat: bool = False,
    ) -> None:
        """Start MAIL, RCPT for each recipient and the message (DATA, or
        one ``BDAT n LAST`` with *use_bdat*). Ends in ``TransactionDone``.

        Raises ``LocalProtocolError`` when not ready, when an RSET is due
        (``needs_reset``), without recipients, or for a parameter or
        BDAT that the server did not offer.
        """
        self._need(State.READY)
        caps = self.capabilities
        if self.needs_reset:
            raise LocalProtocolError("an earlier transaction is open: RSET first")
        if not recipients:
            raise LocalProtocolError("a transaction needs recipients")
        if use_bdat and not caps.chunking:
            raise LocalProtocolError("BDAT but the server lacks CHUNKING")
        if mail.body.upper() == "BINARYMIME" and not use_bdat:
            raise LocalProtocolError("BODY=BINARYMIME must be sent with BDAT")
        mail_line = mail_command(mail, caps)
        rcpt_lines = tuple(rcpt_command(r, caps, mail.smtputf8) for r in recipients)
        tx = _Transaction(mail, rcpt_lines, content, use_bdat, caps.pipelining)
        self._tx = tx
        self._command(mail_line, _Await.MAIL)
        if tx.pipelined:
            # RFC 2920 §3.1: one group, DATA last; BDAT too when the
            # message is small (see the module docstring).
            for line in rcpt_lines:
                self._command(line, _Await.RCPT)
            if not use_bdat:
                self._command(b"DATA\r\n", _Await.DATA)
            elif len(content) <= PIPELINED_BDAT_LIMIT:
                tx.bdat_sent = True
                self._command(_bdat_command(content), _Await.BDAT)

    def rset(self) -> None:
        self._need(State.READY)
        self._command(b"RSET\r\n", _Await.RSET)

    def quit(self) -> None:
        """QUIT; allowed whenever no reply is awaited (also after a
        greeting or EHLO that refused us)."""
        self._need(State.INITIAL, State.READY)
        self._command(b"QUIT\r\n", _Await.QUIT)

    # ------------------------------------------------------------------
    # Internals

    def _need(self, *states: State) -> None:
        if self.state not in states:
            raise LocalProtocolError(f"command not allowed in state {self.state.name}")

    def _command(self, line: bytes, kind: _Await) -> None:
        self._out.append(line)
        self._expect.append(kind)
        if self.state is not State.GREETING:
            self.state = State.BUSY

    def _lost(self) -> Reply:
        if self._expect:
            what = f"while waiting for the reply to {self.awaiting}"
            return Reply.of(421, "4.4.2", f"Connection lost {what}")
        return Reply.of(421, "4.4.2", "Connection closed by the server")

    def _dispatch(self, reply: Reply) -> None:
        if not self._expect:
            if reply.code == 421:
                self._shut(reply)
            else:
                self._shut(Reply.of(421, "4.5.0", "Protocol error: unexpected reply"))
            return
        kind = self._expect.popleft()
        _HANDLERS[kind](self, reply)
        # RFC 5321 §3.8: 421 means the server is closing the channel.
        if reply.code == 421 and self.state is not State.CLOSED:
            self._shut(reply)

    def _shut(self, reply: Reply) -> None:
        # Whatever is outstanding gets *reply* as its answer, so every
        # operation ends in its event.
        if self._tx is not None:
            tx = self._tx
            tx.mail_reply = tx.mail_reply or reply
            tx.rcpt_replies += [reply] * (len(tx.rcpts) - len(tx.rcpt_replies))
            if tx.accepted and tx.data_reply is None:
                tx.data_reply = reply
            self._finish()
        elif self._expect:
            self._events.append(_single_event(self._expect[0], reply))
        self._expect.clear()
        self._out.clear()
        self._reader.clear()
        self._auth_steps.clear()
        self.state = State.CLOSED
        self._events.append(Closed(reply))

    def _idle(self, state: State = State.READY) -> None:
        if not self._expect:
            self.state = state

    # One handler per awaited reply.

    def _on_greeting(self, reply: Reply) -> None:
        self.state = State.INITIAL
        self._events.append(Greeting(reply))

    def _on_ehlo(self, reply: Reply) -> None:
        self._on_hello(reply, True)

    def _on_helo(self, reply: Reply) -> None:
        self._on_hello(reply, False)

    def _on_hello(self, reply: Reply, extended: bool) -> None:
        if _ok(reply):
            self.capabilities = (
                Capabilities.from_ehlo(reply) if extended else Capabilities()
            )
            self._idle(State.READY)
        else:
            self.capabilities = Capabilities()
            self._idle(State.INITIAL)
        self._events.append(EhloDone(reply, self.capabilities, extended))

    def _on_starttls(self, reply: Reply) -> None:
        if reply.code == 220:
            # Anything after the 220 came in cleartext: drop it unread.
            self._reader.clear()
            self.capabilities = Capabilities()
            self.state = State.TLS_PENDING
        else:
            self._idle()
        self._events.append(StartTlsDone(reply))

    def _on_auth(self, reply: Reply) -> None:
        if reply.code == 334:
            # A challenge: answer with the next step, or cancel with "*"
            # when the server asks more than the mechanism has.
            step = self._auth_steps.pop(0) if self._auth_steps else b"*"
            self._command(step + b"\r\n", _Await.AUTH)
            return
        self._auth_steps.clear()
        self._idle()
        self._events.append(AuthDone(reply))

    def _on_mail(self, reply: Reply) -> None:
        tx = self._transaction()
        tx.mail_reply = reply
        if tx.pipelined:
            return
        if _ok(reply):
            self._command(tx.rcpts[0], _Await.RCPT)
        else:
            tx.rcpt_replies = [reply] * len(tx.rcpts)
            self._finish()

    def _on_rcpt(self, reply: Reply) -> None:
        tx = self._transaction()
        tx.rcpt_replies.append(reply)
        done = len(tx.rcpt_replies)
        if done < len(tx.rcpts):
            if not tx.pipelined:
                self._command(tx.rcpts[done], _Await.RCPT)
            return
        if tx.pipelined and (not tx.bdat or tx.bdat_sent):
            return  # DATA's or BDAT's reply comes next.
        if not tx.accepted:
            self.needs_reset = tx.mail_ok
            self._finish()
        elif tx.bdat:
            self._command(_bdat_command(tx.content), _Await.BDAT)
        else:
            self._command(b"DATA\r\n", _Await.DATA)

    def _on_data(self, reply: Reply) -> None:
        tx = self._transaction()
        if reply.code == 354:
            if tx.accepted:
                self._command(dot_stuff(tx.content), _Await.DOT)
            else:
                # RFC 2920 §3.1: DATA was accepted although no recipient
                # was; end the empty message with a lone dot.
                self._command(b".\r\n", _Await.EMPTY_DOT)
            return
        tx.data_reply = reply
        self.needs_reset = tx.mail_ok
        self._finish()

    def _on_dot(self, reply: Reply) -> None:
        self._transaction().data_reply = reply
        self.needs_reset = False
        self._finish()

    def _on_empty_dot(self, reply: Reply) -> None:
        # The reply to a message we never meant to send decides nothing.
        self.needs_reset = False
        self._finish()

    def _on_bdat(self, reply: Reply) -> None:
        tx = self._transaction()
        tx.data_reply = reply
        # After a failed BDAT LAST the server's state is unclear
        # (RFC 3030 §2 leaves it open), as after a pipelined BDAT that
        # no recipient was there for: reset to be sure.
        self.needs_reset = not _ok(reply) or not tx.accepted
        self._finish()

    def _on_rset(self, reply: Reply) -> None:
        if _ok(reply):
            self.needs_reset = False
        self._idle()
        self._events.append(RsetDone(reply))

    def _on_quit(self, reply: Reply) -> None:
        self._events.append(QuitDone(reply))
        self._expect.clear()
        self.state = State.CLOSED
        self._events.append(Closed(reply))

    def _transaction(self) -> _Transaction:
        if self._tx is None:  # pragma: no cover - the handlers' contract
            raise LocalProtocolError("transaction reply without a transaction")
        return self._tx

    def _finish(self) -> None:
        tx = self._transaction()
        assert tx.mail_reply is not None
        self._tx = None
        self._events.append(
            TransactionDone(tx.mail_reply, tuple(tx.rcpt_replies), tx.data_reply)
        )
        self._idle()


def _b64(text: str) -> bytes:
    return base64.b64encode(text.encode("utf-8"))


def _single_event(kind: _Await, reply: Reply) -> Event:
    if kind is _Await.GREETING:
        return Greeting(reply)
    if kind in (_Await.EHLO, _Await.HELO):
        return EhloDone(reply, Capabilities(), kind is _Await.EHLO)
    if kind is _Await.STARTTLS:
        return StartTlsDone(reply)
    if kind is _Await.AUTH:
        return AuthDone(reply)
    if kind is _Await.RSET:
        return RsetDone(reply)
    return QuitDone(reply)


_Handler = Callable[[ClientConnection, Reply], None]

_HANDLERS: dict[_Await, _Handler] = {
    _Await.GREETING: ClientConnection._on_greeting,
    _Await.EHLO: ClientConnection._on_ehlo,
    _Await.HELO: ClientConnection._on_helo,
    _Await.STARTTLS: ClientConnection._on_starttls,
    _Await.AUTH: ClientConnection._on_auth,
    _Await.MAIL: ClientConnection._on_mail,
    _Await.RCPT: ClientConnection._on_rcpt,
    _Await.DATA: ClientConnection._on_data,
    _Await.DOT: ClientConnection._on_dot,
    _Await.EMPTY_DOT: ClientConnection._on_empty_dot,
    _Await.BDAT: ClientConnection._on_bdat,
    _Await.RSET: ClientConnection._on_rset,
    _Await.QUIT: ClientConnection._on_quit,
}
