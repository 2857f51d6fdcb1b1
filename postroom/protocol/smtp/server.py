"""The server side of SMTP as a sans-I/O state machine.

Theory of operation
-------------------
The driver feeds whatever bytes arrive to ``receive_data`` (``b""`` for
end of file), then calls ``next_event`` until it returns ``NEED_DATA``
or ``PAUSED``, writing ``data_to_send()`` to the peer whenever it is about
to wait. The core never blocks, sleeps or reads a clock.

States (``State``)::

    GREETING --greet(220)--> INITIAL --HELO/EHLO--> READY <----------+
                                ^                     |               |
                                |                  MAIL ok            |
                        tls_started()                 v               |
                                |                  MAIL --RCPT ok--+  |
                          TLS_PENDING                 |   DATA/BDAT |  |
                                ^                     v             v  |
                   STARTTLS ok  |                  DATA / BDAT -> Message answered
    any state --QUIT / close() / EOF--> CLOSED

``AUTH`` is a sub-conversation (state ``AUTH``) entered from READY and
left back to READY.

Rules this file enforces, so that no driver has to:

* Sequence: HELO/EHLO before MAIL (503), MAIL before RCPT, RCPT before
  DATA; EHLO and RSET reset the transaction (RFC 5321 §4.1.4).
* Limits (RFC 5321 §4.5.3.1): command lines of 512 octets including
  CRLF, AUTH lines of 12288 (RFC 4954 §4), message text lines of 1000,
  recipients per message (452 4.5.3 past the limit), message size (SIZE=
  at MAIL and the real size at end of data, 552 5.3.4).
* SMTP smuggling: DATA ends only at ``<CRLF>.<CRLF>``. A bare CR or LF
  inside the data never ends it, and the message is refused (or, if
  configured, every line end is normalized to CRLF *before* dot-
  unstuffing, so a smuggled marker loses its dot like any stuffed line
  and the stored message holds no lone "." line from it).
* STARTTLS (RFC 3207 §4.2; CVE-2011-0411): bytes buffered after the
  STARTTLS line are thrown away, and after the handshake everything
  learnt from the client (EHLO name, AUTH, transaction) is forgotten.
* A client that keeps erring (``hard_error_limit`` error replies) is
  disconnected with 421, as Postfix does.

What the core does not decide: whether a sender or recipient is welcome,
whether credentials are good, where messages go. Those are events the
driver answers (see ``events.py``).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from postroom.errors import LocalProtocolError
from postroom.protocol import sasl
from postroom.protocol.smtp import content as content_rules
from postroom.protocol.smtp import events, replies
from postroom.protocol.smtp import params as param_rules
from postroom.protocol.smtp.events import (
    NEED_DATA,
    PAUSED,
    MailParams,
    RcptParams,
)
from postroom.protocol.smtp.replies import Reply
from postroom.protocol.smtp.syntax import (
    Address,
    SyntaxProblem,
    has_non_ascii,
    parse_parameters,
    parse_path,
)

COMMAND_LINE_LIMIT = 512
AUTH_LINE_LIMIT = 12288

# The commands we know, for HELP and the unknown-command counter.
COMMANDS = (
    "HELO",
    "EHLO",
    "MAIL",
    "RCPT",
    "DATA",
    "BDAT",
    "RSET",
    "NOOP",
    "QUIT",
    "VRFY",
    "EXPN",
    "HELP",
    "AUTH",
    "STARTTLS",
    "ETRN",
)

HELP_TEXT: dict[str, str] = {
    "HELO": "HELO <hostname>: introduce yourself (plain SMTP)",
    "EHLO": "EHLO <hostname>: introduce yourself and list extensions",
    "MAIL": "MAIL FROM:<sender> [SIZE=n] [BODY=7BIT|8BITMIME|BINARYMIME] "
    "[SMTPUTF8] [RET=FULL|HDRS] [ENVID=id] [REQUIRETLS]",
    "RCPT": "RCPT TO:<recipient> [NOTIFY=NEVER|SUCCESS,FAILURE,DELAY] "
    "[ORCPT=rfc822;address]: one per recipient, after MAIL",
    "DATA": "DATA: send the message after the 354 reply, end with a line "
    "holding only '.'",
    "BDAT": "BDAT <octets> [LAST]: send the message in chunks of exactly "
    "<octets> bytes (CHUNKING)",
    "RSET": "RSET: abandon the current transaction",
    "NOOP": "NOOP: do nothing, reply 250",
    "QUIT": "QUIT: close the connection",
    "VRFY": "VRFY <address>: ask whether an address exists",
    "EXPN": "EXPN <list>: ask for the members of a mailing list",
    "HELP": "HELP [command]: this text",
    "AUTH": "AUTH PLAIN|LOGIN [initial-response]: log in (after STARTTLS)",
    "STARTTLS": "STARTTLS: switch the connection to TLS, then EHLO again",
    "ETRN": "ETRN <domain>: ask for queued mail to that domain to be sent",
}


class State(enum.Enum):
    GREETING = enum.auto()
    INITIAL = enum.auto()
    READY = enum.auto()
    MAIL = enum.auto()
    DATA = enum.auto()
    BDAT = enum.auto()
    AUTH = enum.auto()
    TLS_PENDING = enum.auto()
    REFUSING = enum.auto()
    CLOSED = enum.auto()


@dataclass
class ServerOptions:
    """What this listener offers; fixed for the life of a connection
    except ``tls_active``, which the core updates itself."""

    hostname: str = "localhost"
    max_message_size: int = 36_700_160
    max_recipients: int = 1000
    tls_available: bool = False
    tls_active: bool = False
    auth_enabled: bool = False
    auth_without_tls: bool = False
    bare_newlines: str = "reject"  # or "normalize"
    undeclared_8bit: str = "reject"  # or "accept"
    hard_error_limit: int = 20


@dataclass
class Transaction:
    sender: Address
    params: MailParams
    recipients: list[tuple[Address, RcptParams]] = field(default_factory=list)
    chunks: bytearray | None = None  # BDAT content so far
    failed: Reply | None = None  # a BDAT chunk failed: refuse the rest
    oversize: bool = False


@dataclass
class Counter:
    """Per-command tallies for the disconnect log line (Postfix style:
    ``rcpt=2/3`` means three tries, two accepted)."""

    tried: dict[str, int] = field(default_factory=dict)
    succeeded: dict[str, int] = field(default_factory=dict)

    def add(self, verb: str, ok: bool) -> None:
        self.tried[verb] = self.tried.get(verb, 0) + 1
        if ok:
            self.succeeded[verb] = self.succeeded.get(verb, 0) + 1

    def summary(self) -> str:
        parts = []
        for verb, n in self.tried.items():
            good = self.succeeded.get(verb, 0)
            parts.append(
                f"{verb.lower()}={good}" if good == n else f"{verb.lower()}={good}/{n}"
            )
        return " ".join(parts)


class ServerConnection:
    """One SMTP conversation, seen from the server."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.state = State.GREETING
        self.helo: str | None = None
        self.esmtp = False
        self.authenticated_as: str | None = None
        self.transaction: Transaction | None = None
        self.counter = Counter()
        self.errors = 0
        self.messages = 0
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._eof = False
        self._close_announce = False
        self._pending: events.Event | None = None
        self._pending_verb = ""
        # Command-line overflow: skip input up to the next LF.
        self._skipping = False
        # DATA: bytes of _buf already searched for the end marker;
        # _data_dropped means we stopped keeping them (far too big).
        self._scan = 0
        self._data_dropped = False
        # BDAT: octets of the current chunk still to read, and its LAST.
        self._chunk_left = 0
        self._chunk_last = False
        self._chunk_reply: Reply | None = None
        # AUTH: the SASL exchange in progress.
        self._sasl: sasl.SaslServer | None = None

    # ------------------------------------------------------------------
    # Driver interface

    def greet(self, reply: Reply) -> None:
        """Send the greeting. 220 opens the session; 554 keeps it open
        but refuses everything except QUIT (RFC 5321 §3.1); anything else
        (421) closes it."""
        if self.state is not State.GREETING:
            raise LocalProtocolError("greeting already sent")
        self._send(reply)
        if reply.code == 220:
            self.state = State.INITIAL
        elif reply.code == 554:
            self.state = State.REFUSING
        else:
            self.state = State.CLOSED

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; ``b""`` means end of file."""
        if data:
            if self.state is State.TLS_PENDING:
                return  # Cleartext after STARTTLS: never trusted.
            self._buf += data
        else:
            self._eof = True

    def data_to_send(self) -> bytes:
        """Everything the core wants written, in one piece."""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def respond(self, reply: Reply) -> None:
        """Answer the outstanding event; see ``events.py`` for the rules."""
        event = self._pending
        if event is None:
            raise LocalProtocolError("no event is waiting for an answer")
        self._pending = None
        ok = reply.positive
        self.counter.add(self._pending_verb, ok)

        if isinstance(event, events.Helo):
            if ok:
                self.helo, self.esmtp = event.name, event.extended
                self.transaction = None
                self.state = State.READY
        elif isinstance(event, events.MailFrom):
            if ok:
                self.transaction = Transaction(event.sender, event.params)
                self.state = State.MAIL
        elif isinstance(event, events.RcptTo):
            if ok:
                assert self.transaction is not None
                self.transaction.recipients.append((event.recipient, event.params))
        elif isinstance(event, events.Message):
            self.transaction = None
            self.state = State.READY
            if ok:
                self.messages += 1
        elif isinstance(event, events.Auth):
            self.state = State.READY
            if ok:
                self.authenticated_as = event.username
        elif isinstance(event, events.StartTls) and ok:
            # RFC 3207 §4.2 / CVE-2011-0411: nothing the client sent in
            # cleartext after STARTTLS may be acted upon.
            self._buf.clear()
            self.state = State.TLS_PENDING
        self._send(reply, count=False)
        if reply.code == 421:
            # 421 always closes the transmission channel (RFC 5321 §3.8).
            self.state = State.CLOSED
            self._close_announce = True

    def tls_started(self) -> None:
        """The driver finished the TLS handshake after our 220."""
        if self.state is not State.TLS_PENDING:
            raise LocalProtocolError("tls_started() without STARTTLS")
        self.options.tls_active = True
        self._reset_session()

    def tls_implicit(self) -> None:
        """The connection is TLS from its first byte (RFC 8314)."""
        self.options.tls_active = True

    def close(self, reply: Reply | None = None) -> None:
        """End the conversation from our side (timeout, shutdown)."""
        if reply is not None and self.state is not State.CLOSED:
            self._send(reply)
        self._pending = None
        self.state = State.CLOSED

    @property
    def buffered(self) -> int:
        """Octets received and not yet processed."""
        return len(self._buf)

    @property
    def awaiting_answer(self) -> bool:
        """An answer-required event is outstanding (see ``respond``)."""
        return self._pending is not None

    @property
    def in_transaction(self) -> bool:
        return self.transaction is not None or self.state in (State.DATA, State.BDAT)

    @property
    def auth_offered(self) -> bool:
        o = self.options
        return o.auth_enabled and self.esmtp and (o.tls_active or o.auth_without_tls)

    def next_event(self) -> events.Event | events._Sentinel:
        """The next event, or NEED_DATA / PAUSED."""
        while True:
            if self._pending is not None:
                return PAUSED
            state = self.state
            if state is State.CLOSED:
                if self._close_announce:
                    self._close_announce = False
                    return events.Closed(by_peer=False)
                return NEED_DATA
            if state is State.DATA:
                result = self._next_data()
            elif state is State.BDAT:
                result = self._next_chunk()
            elif state is State.TLS_PENDING:
                return self._hang_up() if self._eof else NEED_DATA
            else:
                result = self._next_line()
            if result is None:
                continue  # Answered by the core itself; look again.
            if result is NEED_DATA and self._eof:
                return self._hang_up()
            if isinstance(result, events.Closed):
                self.state = State.CLOSED
                return result
            if result is not NEED_DATA:
                self._pending = result  # type: ignore[assignment]
            return result

    # ------------------------------------------------------------------
    # Output helpers

    def _send(self, reply: Reply, *, count: bool = False, verb: str = "") -> None:
        if count:
            self.counter.add(verb, reply.positive)
        if reply.code >= 500 or reply.code in (451, 452, 455):
            self.errors += 1
        self._out.append(reply.render())
        if (
            self.errors >= self.options.hard_error_limit
            and self.state is not State.CLOSED
            and reply.code != 421
        ):
            self._out.append(
                Reply.of(421, "4.7.0", "Too many errors, closing").render()
            )
            self.state = State.CLOSED
            self._close_announce = True

    def _hang_up(self) -> events.Closed:
        lost = self.state in (State.DATA, State.BDAT) or (
            self.transaction is not None and self.transaction.chunks is not None
        )
        self.state = State.CLOSED
        return events.Closed(by_peer=True, lost_message=lost)

    def _reset_session(self) -> None:
        self.helo = None
        self.esmtp = False
        self.authenticated_as = None
        self.transaction = None
        self.state = State.INITIAL

    # ------------------------------------------------------------------
    # Command lines

    def _next_line(self) -> events.Event | events._Sentinel | None:
        limit = AUTH_LINE_LIMIT if self.state is State.AUTH else COMMAND_LINE_LIMIT
        buf = self._buf
        end = buf.find(b"\n")
        if end < 0:
            if len(buf) > limit:
                # Keep nothing of an overlong line; answer once it ends.
                buf.clear()
                self._skipping = True
            return NEED_DATA
        raw = bytes(buf[: end + 1])
        del buf[: end + 1]

        if self._skipping or len(raw) > limit:
            self._skipping = False
            self._send(replies.LINE_TOO_LONG, count=True, verb="unknown")
            return None
        if len(raw) < 2 or raw[-2] != 0x0D:
            self._send(replies.BARE_LF_COMMAND, count=True, verb="unknown")
            return None
        line = raw[:-2]
        if b"\0" in line or b"\r" in line:
            self._send(
                replies.NUL_IN_COMMAND if b"\0" in line else replies.BARE_LF_COMMAND,
                count=True,
                verb="unknown",
            )
            return None
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self._send(
                Reply.of(500, "5.5.2", "Command is not valid UTF-8"),
                count=True,
                verb="unknown",
            )
            return None

        if self.state is State.AUTH:
            return self._auth_continue(text)
        verb, _, arg = text.partition(" ")
        verb = verb.upper()
        if self.state is State.REFUSING and verb != "QUIT":
            self._send(
                Reply.of(503, "5.5.0", "No SMTP service here"), count=True, verb=verb
            )
            return None
        handler = _HANDLERS.get(verb)
        if handler is None:
            self._send(replies.UNKNOWN_COMMAND, count=True, verb="unknown")
            return None
        self._pending_verb = verb
        return handler(self, arg)

    def _reject(self, reply: Reply) -> None:
        """Answer the current command negatively ourselves."""
        self._send(reply, count=True, verb=self._pending_verb)

    def _need_session(self) -> bool:
        if self.helo is None:
            self._reject(replies.NEED_HELO)
            return False
        return True

    # One method per command: each does its cheap checks (sequence, then
    # syntax) and either answers itself (returning None) or returns the
    # event for the driver.

    def _helo(self, arg: str, extended: bool) -> events.Event | None:
        name = arg.strip(" ")
        if not name or " " in name:
            self._reject(replies.HELO_SYNTAX)
            return None
        if extended:
            reply = Reply(250, "", (self.options.hostname, *self._extensions()))
        else:
            reply = Reply.of(250, "", self.options.hostname)
        return events.Helo(name, extended, reply)

    def _ehlo(self, arg: str) -> events.Event | None:
        return self._helo(arg, True)

    def _helo_plain(self, arg: str) -> events.Event | None:
        return self._helo(arg, False)

    def _extensions(self) -> list[str]:
        o = self.options
        ext = ["PIPELINING", f"SIZE {o.max_message_size}", "ETRN"]
        if o.tls_available and not o.tls_active:
            ext.append("STARTTLS")
        if o.auth_enabled and (o.tls_active or o.auth_without_tls):
            ext.append("AUTH PLAIN LOGIN")
        ext += [
            "ENHANCEDSTATUSCODES",
            "8BITMIME",
            "BINARYMIME",
            "CHUNKING",
            "DSN",
            "SMTPUTF8",
        ]
        if o.tls_active:
            ext.append("REQUIRETLS")
        return ext

    def _mail(self, arg: str) -> events.Event | None:
        if not self._need_session():
            return None
        if self.transaction is not None:
            self._reject(replies.NESTED_MAIL)
            return None
        if arg[:5].upper() != "FROM:":
            self._reject(replies.MAIL_SYNTAX)
            return None
        try:
            sender, rest = parse_path(
                arg[5:],
                null_ok=True,
                bad=Reply.of(501, "5.1.7", "Bad sender address syntax"),
            )
            params = param_rules.mail_params(
                parse_parameters(rest), self._param_context()
            )
        except SyntaxProblem as e:
            self._reject(e.reply)
            return None
        if has_non_ascii(sender) and not params.smtputf8:
            self._reject(replies.NON_ASCII_ADDRESS)
            return None
        return events.MailFrom(sender, params)

    def _param_context(self) -> param_rules.Context:
        return param_rules.Context(
            esmtp=self.esmtp,
            max_message_size=self.options.max_message_size,
            tls_active=self.options.tls_active,
        )

    def _rcpt(self, arg: str) -> events.Event | None:
        if not self._need_session():
            return None
        tx = self.transaction
        if tx is None:
            self._reject(replies.NEED_MAIL)
            return None
        if arg[:3].upper() != "TO:":
            self._reject(replies.RCPT_SYNTAX)
            return None
        try:
            rcpt, rest = parse_path(
                arg[3:],
                null_ok=False,
                bad=Reply.of(501, "5.1.3", "Bad recipient address syntax"),
            )
            params = param_rules.rcpt_params(
                parse_parameters(rest), self._param_context()
            )
        except SyntaxProblem as e:
            self._reject(e.reply)
            return None
        if has_non_ascii(rcpt) and not tx.params.smtputf8:
            self._reject(replies.NON_ASCII_ADDRESS)
            return None
        if len(tx.recipients) >= self.options.max_recipients:
            self._reject(replies.TOO_MANY_RECIPIENTS)
            return None
        return events.RcptTo(rcpt, params)

    def _data(self, arg: str) -> events.Event | None:
        if not self._need_session():
            return None
        tx = self.transaction
        if arg:
            self._reject(replies.NO_ARGUMENTS)
            return None
        if tx is None:
            self._reject(replies.NEED_MAIL)
            return None
        if not tx.recipients:
            self._reject(replies.NO_VALID_RECIPIENTS)
            return None
        if tx.chunks is not None:
            self._reject(replies.DATA_AFTER_BDAT)
            return None
        if tx.params.body == "BINARYMIME":
            self._reject(replies.DATA_WITH_BINARYMIME)
            return None
        self._send(replies.START_DATA)
        # A CRLF sentinel in front lets one search for CRLF "." CRLF find
        # an end marker on the very first line too.
        self._buf[0:0] = b"\r\n"
        self._scan = 0
        self._data_dropped = False
        self.state = State.DATA
        return None

    def _bdat(self, arg: str) -> events.Event | None:
        parts = arg.split(" ")
        if (
            not 1 <= len(parts) <= 2
            or not (parts[0].isascii() and parts[0].isdigit())
            or len(parts[0]) > 18
            or (len(parts) == 2 and parts[1].upper() != "LAST")
        ):
            # Without a valid size we cannot know how much to skip; the
            # client's chunk will be read as commands and fail there.
            self._reject(replies.BDAT_SYNTAX)
            return None
        self._chunk_left = int(parts[0])
        self._chunk_last = len(parts) == 2
        self._chunk_reply = None
        tx = self.transaction
        # Any refusal is sent only after the chunk has been read and
        # dropped (RFC 3030 §2).
        if self.helo is None:
            self._chunk_reply = replies.NEED_HELO
        elif not self.esmtp:
            self._chunk_reply = replies.UNKNOWN_COMMAND
        elif tx is None:
            self._chunk_reply = replies.NEED_MAIL
        elif not tx.recipients:
            self._chunk_reply = replies.NO_VALID_RECIPIENTS
        elif tx.failed is not None:
            self._chunk_reply = replies.BDAT_AFTER_FAILURE
        elif tx.chunks is None:
            tx.chunks = bytearray()
        self.state = State.BDAT
        return None

    def _rset(self, arg: str) -> events.Event | None:
        if arg.strip(" "):
            self._reject(replies.NO_ARGUMENTS)
            return None
        self.transaction = None
        if self.state is State.MAIL:
            self.state = State.READY
        self._send(replies.RESET_OK, count=True, verb="RSET")
        return None

    def _noop(self, arg: str) -> events.Event | None:
        self._send(replies.NOOP_OK, count=True, verb="NOOP")
        return None

    def _quit(self, arg: str) -> events.Event | None:
        if arg.strip(" "):
            self._reject(replies.NO_ARGUMENTS)
            return None
        self._send(replies.CLOSING, count=True, verb="QUIT")
        return events.Closed(by_peer=False, lost_message=False)

    def _help(self, arg: str) -> events.Event | None:
        topic = arg.strip(" ").upper()
        if not topic:
            reply = Reply(
                214,
                "2.0.0",
                (
                    "Commands: " + " ".join(COMMANDS),
                    "Use HELP <command> for its syntax; RFC 5321 has the rest",
                ),
            )
        elif topic in HELP_TEXT:
            reply = Reply.of(214, "2.0.0", HELP_TEXT[topic])
        else:
            reply = Reply.of(504, "5.5.4", f"No help for {topic[:30]}")
        self._send(reply, count=True, verb="HELP")
        return None

    def _vrfy(self, arg: str) -> events.Event | None:
        if not arg.strip(" "):
            self._reject(replies.VRFY_SYNTAX)
            return None
        return events.Vrfy(arg.strip(" "))

    def _expn(self, arg: str) -> events.Event | None:
        if not arg.strip(" "):
            self._reject(replies.EXPN_SYNTAX)
            return None
        return events.Expn(arg.strip(" "))

    def _etrn(self, arg: str) -> events.Event | None:
        if not self._need_session():
            return None
        if self.transaction is not None:
            self._reject(Reply.of(503, "5.5.1", "ETRN not allowed in a transaction"))
            return None
        if not arg.strip(" "):
            self._reject(replies.ETRN_SYNTAX)
            return None
        return events.Etrn(arg.strip(" "))

    def _starttls(self, arg: str) -> events.Event | None:
        if arg.strip(" "):
            self._reject(replies.NO_ARGUMENTS)
            return None
        if self.options.tls_active:
            self._reject(replies.TLS_ACTIVE)
            return None
        if not self.options.tls_available:
            self._reject(replies.TLS_NOT_AVAILABLE)
            return None
        if not self._need_session():
            return None
        if self.transaction is not None:
            self._reject(
                Reply.of(503, "5.5.1", "STARTTLS not allowed in a transaction")
            )
            return None
        return events.StartTls()

    # ------------------------------------------------------------------
    # AUTH (RFC 4954): PLAIN (RFC 4616) and LOGIN

    def _auth(self, arg: str) -> events.Event | None:
        if not self._need_session():
            return None
        if not self.auth_offered:
            self._reject(replies.AUTH_NOT_AVAILABLE)
            return None
        if self.authenticated_as is not None:
            self._reject(replies.ALREADY_AUTHENTICATED)
            return None
        if self.transaction is not None:
            self._reject(replies.AUTH_IN_TRANSACTION)
            return None
        parts = arg.split(" ")
        if not 1 <= len(parts) <= 2 or not parts[0]:
            self._reject(replies.AUTH_SYNTAX)
            return None
        mech = parts[0].upper()
        if mech not in sasl.MECHANISMS:
            self._reject(replies.AUTH_UNKNOWN_MECH)
            return None
        self._sasl = sasl.SaslServer(mech)
        self.state = State.AUTH
        return self._auth_outcome(
            self._sasl.start(parts[1] if len(parts) == 2 else None)
        )

    def _auth_continue(self, line: str) -> events.Event | None:
        assert self._sasl is not None
        return self._auth_outcome(self._sasl.step(line))

    def _auth_outcome(self, outcome: sasl.Outcome) -> events.Event | None:
        if isinstance(outcome, sasl.Challenge):
            self._out.append(b"334 " + sasl.encode_challenge(outcome) + b"\r\n")
            return None
        self._sasl = None
        if isinstance(outcome, sasl.Credentials):
            return events.Auth(
                outcome.mechanism, outcome.authzid, outcome.username, outcome.password
            )
        self.state = State.READY
        self._send(_SASL_FAILURES[outcome.reason], count=True, verb="AUTH")
        return None

    # ------------------------------------------------------------------
    # Message content

    def _next_data(self) -> events.Event | events._Sentinel | None:
        buf = self._buf
        end = buf.find(b"\r\n.\r\n", self._scan)
        limit = self.options.max_message_size
        if end < 0:
            # Keep the last 4 octets searchable: a marker may straddle reads.
            self._scan = max(0, len(buf) - 4)
            # The limit is on the message, not on its dot-stuffed form
            # (RFC 1870 §3), and stuffing adds at most one octet to a line
            # of three; past that much, stop keeping what arrives.
            if len(buf) - 4 > limit + limit // 3:
                del buf[:-4]
                self._scan = 0
                self._data_dropped = True
            return NEED_DATA
        raw = bytes(buf[2 : end + 2])
        del buf[: end + 5]
        self.state = State.MAIL
        if self._data_dropped:
            return self._end_transaction(replies.MESSAGE_TOO_BIG)
        if self.options.bare_newlines == "normalize":
            raw = content_rules.normalize_newlines(raw)
        content = content_rules.unstuff(raw)
        if len(content) > limit:
            return self._end_transaction(replies.MESSAGE_TOO_BIG)
        return self._message(content, chunked=False)

    def _next_chunk(self) -> events.Event | events._Sentinel | None:
        buf = self._buf
        take = min(len(buf), self._chunk_left)
        tx = self.transaction
        if take:
            if (
                tx is not None
                and tx.chunks is not None
                and self._chunk_reply is None
                and not tx.oversize
            ):
                tx.chunks += buf[:take]
                if len(tx.chunks) > self.options.max_message_size:
                    tx.oversize = True
                    tx.chunks = bytearray()
            del buf[:take]
            self._chunk_left -= take
        if self._chunk_left:
            return NEED_DATA

        if self.transaction is not None:
            self.state = State.MAIL
        else:
            self.state = State.READY if self.helo is not None else State.INITIAL
        if self._chunk_reply is not None:
            if tx is not None:
                tx.failed = tx.failed or self._chunk_reply
            self._send(self._chunk_reply, count=True, verb="BDAT")
            return None
        assert tx is not None and tx.chunks is not None
        if tx.oversize:
            return self._end_transaction(replies.MESSAGE_TOO_BIG, verb="BDAT")
        if not self._chunk_last:
            self._send(
                Reply.of(250, "2.0.0", f"{len(tx.chunks)} octets received"),
                count=True,
                verb="BDAT",
            )
            return None
        return self._message(bytes(tx.chunks), chunked=True)

    def _message(self, content: bytes, chunked: bool) -> events.Event | None:
        verb = "BDAT" if chunked else "DATA"
        tx = self.transaction
        assert tx is not None
        problem = content_rules.check(
            content,
            tx.params,
            bare_newlines=self.options.bare_newlines,
            undeclared_8bit=self.options.undeclared_8bit,
        )
        if isinstance(problem, Reply):
            return self._end_transaction(problem, verb=verb)
        if problem is not None:
            content = problem
        self._pending_verb = verb
        return events.Message(tx.sender, tx.params, tx.recipients, content, chunked)

    def _end_transaction(self, reply: Reply, verb: str = "DATA") -> events.Event | None:
        self.transaction = None
        self.state = State.READY
        self._send(reply, count=True, verb=verb)
        return None


_SASL_FAILURES = {
    "cancelled": replies.AUTH_CANCELLED,
    "bad-base64": replies.AUTH_BAD_BASE64,
    "malformed": replies.AUTH_FAILED,
}

_Handler = Callable[[ServerConnection, str], "events.Event | None"]


def _handler_table() -> dict[str, _Handler]:
    S = ServerConnection
    return {
        "EHLO": S._ehlo,
        "HELO": S._helo_plain,
        "MAIL": S._mail,
        "RCPT": S._rcpt,
        "DATA": S._data,
        "BDAT": S._bdat,
        "RSET": S._rset,
        "NOOP": S._noop,
        "QUIT": S._quit,
        "HELP": S._help,
        "VRFY": S._vrfy,
        "EXPN": S._expn,
        "ETRN": S._etrn,
        "STARTTLS": S._starttls,
        "AUTH": S._auth,
    }


_HANDLERS: dict[str, _Handler] = _handler_table()
