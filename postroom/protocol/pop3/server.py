"""The server side of POP3 as a sans-I/O state machine.

Theory of operation
-------------------
The driver calls ``greet()`` once, feeds whatever bytes arrive to
``receive_data`` (``b""`` for end of file), then calls ``next_event``
until it returns ``NEED_DATA`` or ``PAUSED``, writing ``data_to_send()``
whenever it is about to wait. The core never blocks, sleeps, reads a
clock or touches a file: the maildrop is a list of ``Entry`` values the
driver hands over at login, and message content is handed in when a
``Retrieve`` event asks for it.

States (``State``, RFC 1939 §3)::

    AUTHORIZATION --Login/Apop accepted--> TRANSACTION --QUIT--> UPDATE
         |  ^                                   |                  |
         |  +-- STLS: StartTls ... tls_started  |        finish_update()
         +--QUIT / EOF / close()--> CLOSED <----+--EOF / close()---+

Events that need the driver (``events.py``) pause the core until their
answer: credentials (``accept_login`` / ``refuse_login``), the TLS
handshake (``tls_started``), message content (``send_message`` /
``refuse_retrieve``) and the removal of deleted messages at QUIT
(``finish_update``). Everything else the core answers itself, in
order, so a pipelined batch (RFC 2449 §6.6) is answered as if sent
one command at a time.

Rules this file enforces, so that no driver has to:

* Sequence: only the commands of the current state (RFC 1939 §4-6);
  PASS only right after USER; STLS only in AUTHORIZATION and only once
  (RFC 2595 §4).
* Deletions are marks until QUIT in TRANSACTION; a connection that ends
  any other way (EOF, timeout, ``close()``) removes nothing (§6).
* Plain-text logins (USER/PASS, AUTH PLAIN/LOGIN) only with TLS active
  or where the driver says the channel is safe anyway
  (``Options.plaintext_allowed``): RFC 2595 §2.2 and the Dovecot habit
  of trusting loopback. CAPA then lists neither USER nor SASL.
* STLS (RFC 2595 §4; compare CVE-2011-0411 for SMTP): whatever the
  client pipelined behind STLS is thrown away, and the USER given
  before it is forgotten.
* Limits: command lines of 255 octets including CRLF (RFC 2449 §4),
  SASL response lines of ``SASL_LINE_LIMIT``; a longer line is read
  to its end, dropped and answered ``-ERR``. A client that keeps
  erring is disconnected after ``HARD_ERROR_LIMIT`` errors.
* Multi-line answers are dot-stuffed and end with ``.`` CRLF (§3).

Line ends: CRLF, as RFC 1939 §3 asks; a bare LF is taken as a line end
too, since no command of POP3 carries data where that could smuggle
anything, and telnet users send it.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from postroom.errors import LocalProtocolError
from postroom.protocol import sasl
from postroom.protocol.pop3 import events, responses
from postroom.protocol.pop3.content import crlf, stuff, top
from postroom.protocol.pop3.events import NEED_DATA, PAUSED, Entry
from postroom.protocol.pop3.responses import Response

COMMAND_LINE_LIMIT = 255
# RFC 5034 sets no limit on SASL responses; 12288 follows RFC 4954 §4
# for SMTP AUTH, and is plenty for PLAIN.
SASL_LINE_LIMIT = 12288
HARD_ERROR_LIMIT = 10

# Longest message number or line count we parse; more is a syntax error.
_MAX_DIGITS = 9

_CRLF = b"\r\n"
_END = b".\r\n"


class State(enum.Enum):
    AUTHORIZATION = enum.auto()
    TRANSACTION = enum.auto()
    UPDATE = enum.auto()
    CLOSED = enum.auto()


@dataclass
class Options:
    """What this connection offers. The driver sets it up front;
    ``tls_active`` is updated by the core at ``tls_started``."""

    tls_available: bool = False
    tls_active: bool = False
    plaintext_allowed: bool = False
    # RFC 1939 §7 "<process-ID.clock@hostname>"; "" leaves APOP off.
    apop_timestamp: str = ""
    greeting: str = "Postroom POP3 server ready"
    implementation: str = "Postroom"
    mechanisms: tuple[str, ...] = sasl.MECHANISMS


class _TooLong:
    """A line over the limit was read and dropped."""


_TOO_LONG = _TooLong()

Handler = Callable[["ServerConnection", str], "events.Event | None"]


class ServerConnection:
    """One POP3 conversation. See the module docstring for the rules."""

    def __init__(self, options: Options | None = None) -> None:
        self.options = options or Options()
        self.state = State.AUTHORIZATION
        # Who logged in; set when the driver accepts a login.
        self.username: str | None = None
        # Commands seen, by verb, for the disconnect log line.
        self.counter: Counter[str] = Counter()
        self._in = bytearray()
        self._out: list[bytes] = []
        self._eof = False
        self._discarding = False
        self._errors = 0
        self._waiting: events.Event | None = None
        self._user: str | None = None
        self._sasl: sasl.SaslServer | None = None
        self._entries: list[Entry] = []
        self._deleted: set[int] = set()

    # ------------------------------------------------------------------
    # Bytes in, bytes out

    def greet(self, refusal: Response | None = None) -> None:
        """Queue the greeting, or *refusal* (an ``-ERR``) and close."""
        if refusal is not None:
            self._send(refusal)
            self.state = State.CLOSED
            return
        stamp = self.options.apop_timestamp
        self._send(responses.ok(f"{self.options.greeting} {stamp}".rstrip()))

    def receive_data(self, data: bytes) -> None:
        """Buffer *data*; ``b""`` means the client closed its side."""
        if not data:
            self._eof = True
        elif self.state is not State.CLOSED and not isinstance(
            self._waiting, events.StartTls
        ):
            # While STLS is pending, cleartext cannot be trusted: it
            # was sent before the client saw our +OK.
            self._in += data

    @property
    def buffered(self) -> int:
        """Octets received and not yet parsed (for the driver's bound)."""
        return len(self._in)

    def data_to_send(self) -> bytes:
        """Everything queued for the client since the last call."""
        out = self._out
        if not out:
            return b""
        self._out = []
        return out[0] if len(out) == 1 else b"".join(out)

    def next_event(self) -> events.Event | object:
        """The next event, ``NEED_DATA`` or ``PAUSED``."""
        if self._waiting is not None:
            return PAUSED
        while self.state is not State.CLOSED:
            line = self._take_line()
            if line is None:
                if not self._eof:
                    return NEED_DATA
                # The client went away. Marked messages stay (§6).
                self.state = State.CLOSED
                break
            event = self._dispatch(line)
            if event is not None:
                if not isinstance(event, events.Closed):
                    self._waiting = event
                return event
        return events.Closed()

    def close(self, response: Response | None = None) -> None:
        """End the conversation now (timeout, shutdown), saying
        *response* first if given. Nothing marked is removed."""
        if response is not None and self.state is not State.CLOSED:
            self._send(response)
        self.state = State.CLOSED
        self._waiting = None

    # ------------------------------------------------------------------
    # Answers to events

    def accept_login(
        self, entries: Sequence[Entry], username: str | None = None
    ) -> None:
        """The credentials are good and the maildrop is locked and
        listed: enter TRANSACTION with *entries* as messages 1..n.
        *username* is the account's own spelling (default: as given)."""
        event = self._answer(events.Login, events.Apop)
        assert isinstance(event, events.Login | events.Apop)
        self.username = username or event.username
        self._entries = list(entries)
        self._deleted.clear()
        self.state = State.TRANSACTION
        self._send(self._maildrop_status())

    def refuse_login(self, response: Response) -> None:
        """Say *response* (``-ERR [AUTH]``, ``[IN-USE]``, ``[SYS/TEMP]``);
        the client may try again."""
        self._answer(events.Login, events.Apop)
        self._send(response)

    def tls_started(self) -> None:
        """The handshake after STLS is done; go on, encrypted."""
        self._answer(events.StartTls)
        self.options.tls_active = True
        self._in.clear()
        self._user = None

    def send_message(self, content: bytes) -> None:
        """Send the message asked for by the pending Retrieve.

        *content* is the stored message, CRLF line ends (a file with
        bare LF ends, put in a Maildir by another program, is sent with
        CRLF all the same: RFC 1939 §3). RETR sends it whole; TOP the
        header, the blank line and the asked-for number of body lines
        (RFC 1939 §7). Both are dot-stuffed.
        """
        event = self._answer(events.Retrieve)
        assert isinstance(event, events.Retrieve)
        content = crlf(content)
        if event.lines is None:
            self._out.append(b"+OK %d octets\r\n" % len(content))
        else:
            self._out.append(b"+OK top of message follows\r\n")
            content = top(content, event.lines)
        self._out.append(stuff(content))
        if content and not content.endswith(_CRLF):
            self._out.append(_CRLF)
        self._out.append(_END)

    def refuse_retrieve(self, response: Response) -> None:
        """The message cannot be sent (gone, unreadable): say so."""
        self._answer(events.Retrieve)
        self._send(response)

    def finish_update(self, ok: bool) -> None:
        """The driver removed the deleted messages (*ok*) or could not
        remove all of them (RFC 2449 §8: ``-ERR [SYS/TEMP]``); close."""
        self._answer(events.Update)
        if ok:
            left = len(self._entries) - len(self._deleted)
            self._send(
                responses.ok(f"Postroom POP3 server signing off ({left} messages left)")
            )
        else:
            self._send(responses.UPDATE_FAILED)
        self.state = State.CLOSED

    @property
    def awaiting(self) -> events.Event | None:
        """The event waiting for its answer, if any."""
        return self._waiting

    # ------------------------------------------------------------------
    # Reading lines

    def _take_line(self) -> bytes | _TooLong | None:
        buf = self._in
        limit = SASL_LINE_LIMIT if self._sasl is not None else COMMAND_LINE_LIMIT
        end = buf.find(b"\n")
        if self._discarding:
            if end < 0:
                buf.clear()
                return None
            del buf[: end + 1]
            self._discarding = False
            return _TOO_LONG
        if end < 0:
            # No line end yet. A line that cannot fit any more is
            # dropped as it comes, so a flood costs no memory; the same
            # test on a whole line is "end >= limit" below.
            if len(buf) >= limit:
                buf.clear()
                self._discarding = True
            return None
        line = bytes(buf[:end])
        del buf[: end + 1]
        if end >= limit:
            return _TOO_LONG
        return line[:-1] if line.endswith(b"\r") else line

    def _dispatch(self, raw: bytes | _TooLong) -> events.Event | None:
        if isinstance(raw, _TooLong):
            self._sasl = None
            return self._error(responses.LINE_TOO_LONG)
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._sasl = None
            return self._error(responses.NOT_UTF8)
        if self._sasl is not None:
            return self._sasl_step(line)
        if "\0" in line:
            return self._error(responses.SYNTAX)

        verb, _, argument = line.partition(" ")
        verb = verb.upper()
        entry = _COMMANDS.get(verb)
        if entry is None:
            self.counter["unknown"] += 1
            return self._error(responses.UNKNOWN_COMMAND)
        self.counter[verb] += 1
        handler, states = entry

        # PASS must follow USER at once (RFC 1939 §7), so any command
        # in between forgets the user name.
        user, self._user = self._user, None
        if verb == "PASS":
            self._user = user
        if self.state not in states:
            return self._error(responses.WRONG_STATE)
        return handler(self, argument)

    def _error(self, response: Response) -> events.Event | None:
        self._errors += 1
        if self._errors >= HARD_ERROR_LIMIT:
            self._send(responses.TOO_MANY_ERRORS)
            self.state = State.CLOSED
            return events.Closed()
        self._send(response)
        return None

    # ------------------------------------------------------------------
    # AUTHORIZATION: USER, PASS, AUTH, APOP, STLS

    def _plaintext_ok(self) -> bool:
        return self.options.tls_active or self.options.plaintext_allowed

    def _user_cmd(self, argument: str) -> events.Event | None:
        if not self._plaintext_ok():
            self._send(responses.PLAINTEXT_DISABLED)
            return None
        name = argument.strip()
        if not name:
            return self._error(responses.SYNTAX)
        # Always +OK: "no such mailbox" here would let anyone list
        # accounts (RFC 1939 §7 allows -ERR but does not require it).
        self._user = name
        self._send(responses.USER_OK)
        return None

    def _pass(self, argument: str) -> events.Event | None:
        user, self._user = self._user, None
        if not self._plaintext_ok():
            self._send(responses.PLAINTEXT_DISABLED)
            return None
        if user is None:
            self._send(responses.PASS_WITHOUT_USER)
            return None
        # The whole rest of the line: a password may hold spaces
        # (RFC 1939 §7 lets the server read it so).
        return events.Login(user, argument, "USER")

    def _auth(self, argument: str) -> events.Event | None:
        mechanism, _, initial = argument.strip().partition(" ")
        if not mechanism:
            # Listing mechanisms for a bare AUTH comes from the draft
            # before RFC 5034; Outlook and fetchmail still probe with it.
            names = self.options.mechanisms if self._plaintext_ok() else ()
            self._multiline(responses.MECHANISMS, names)
            return None
        if mechanism.upper() not in self.options.mechanisms:
            self._send(responses.UNSUPPORTED_MECHANISM)
            return None
        if not self._plaintext_ok():
            self._send(responses.PLAINTEXT_DISABLED)
            return None
        self._sasl = sasl.SaslServer(mechanism.upper())
        return self._sasl_outcome(self._sasl.start(initial.strip() or None))

    def _sasl_step(self, line: str) -> events.Event | None:
        assert self._sasl is not None
        return self._sasl_outcome(self._sasl.step(line.strip()))

    def _sasl_outcome(self, outcome: sasl.Outcome) -> events.Event | None:
        if isinstance(outcome, sasl.Challenge):
            # RFC 5034 §4: "+ " then the base64 challenge.
            self._out.append(b"+ " + sasl.encode_challenge(outcome) + _CRLF)
            return None
        self._sasl = None
        if isinstance(outcome, sasl.Failure):
            self._send(
                responses.AUTH_CANCELLED
                if outcome.reason == "cancelled"
                else responses.AUTH_MALFORMED
            )
            return None
        if outcome.authzid and outcome.authzid.lower() != outcome.username.lower():
            # Proxy logins (RFC 4616 §2 authzid) are for admins; we
            # have none, so acting as someone else is refused.
            self._send(responses.AUTHZID_REFUSED)
            return None
        return events.Login(outcome.username, outcome.password, outcome.mechanism)

    def _apop(self, argument: str) -> events.Event | None:
        if not self.options.apop_timestamp:
            self._send(responses.APOP_UNAVAILABLE)
            return None
        parts = argument.split()
        if len(parts) != 2 or not _is_md5_hex(parts[1]):
            return self._error(responses.SYNTAX)
        return events.Apop(parts[0], parts[1].lower())

    def _stls(self, argument: str) -> events.Event | None:
        if argument.strip():
            return self._error(responses.SYNTAX)
        if self.options.tls_active:
            self._send(responses.TLS_ACTIVE)
            return None
        if not self.options.tls_available:
            self._send(responses.TLS_UNAVAILABLE)
            return None
        self._send(responses.BEGIN_TLS)
        # Anything pipelined behind STLS was sent in clear text before
        # the client could know TLS would start: drop it.
        self._in.clear()
        self._discarding = False
        return events.StartTls()

    # ------------------------------------------------------------------
    # Either state: CAPA, QUIT

    def _capa(self, argument: str) -> events.Event | None:
        if argument.strip():
            return self._error(responses.SYNTAX)
        # RFC 2449 §5-6. Login capabilities only where a login may work.
        caps = ["TOP", "UIDL", "RESP-CODES", "PIPELINING"]
        if self.state is State.AUTHORIZATION:
            caps.append("AUTH-RESP-CODE")
            if self._plaintext_ok():
                caps += ["USER", "SASL " + " ".join(self.options.mechanisms)]
            if self.options.tls_available and not self.options.tls_active:
                caps.append("STLS")
        caps.append(f"IMPLEMENTATION {self.options.implementation}")
        self._multiline(responses.CAPABILITIES, caps)
        return None

    def _quit(self, argument: str) -> events.Event | None:
        if self.state is State.TRANSACTION:
            self.state = State.UPDATE
            deleted = tuple(self._entries[i] for i in sorted(self._deleted))
            return events.Update(deleted)
        self._send(responses.SIGNING_OFF)
        self.state = State.CLOSED
        return events.Closed()

    # ------------------------------------------------------------------
    # TRANSACTION: STAT, LIST, UIDL, RETR, TOP, DELE, RSET, NOOP

    def _stat(self, argument: str) -> events.Event | None:
        if argument.strip():
            return self._error(responses.SYNTAX)
        count, octets = self._totals()
        self._send(responses.ok(f"{count} {octets}"))
        return None

    def _list(self, argument: str) -> events.Event | None:
        return self._listing(argument, responses.SCAN_LISTING, lambda e: str(e.size))

    def _uidl(self, argument: str) -> events.Event | None:
        return self._listing(argument, responses.UNIQUE_IDS, lambda e: e.unique_id)

    def _listing(
        self, argument: str, header: Response, field: Callable[[Entry], str]
    ) -> events.Event | None:
        if argument.strip():
            found = self._message(argument)
            if isinstance(found, Response):
                return self._refuse(found)
            self._send(responses.ok(f"{found} {field(self._entries[found - 1])}"))
            return None
        self._multiline(
            header,
            (
                f"{n} {field(entry)}"
                for n, entry in enumerate(self._entries, 1)
                if n - 1 not in self._deleted
            ),
        )
        return None

    def _retr(self, argument: str) -> events.Event | None:
        found = self._message(argument)
        if isinstance(found, Response):
            return self._refuse(found)
        return events.Retrieve(found, self._entries[found - 1], None)

    def _top(self, argument: str) -> events.Event | None:
        number, _, lines = argument.strip().partition(" ")
        count = _number(lines.strip())
        if count is None:
            return self._error(responses.SYNTAX)
        found = self._message(number)
        if isinstance(found, Response):
            return self._refuse(found)
        return events.Retrieve(found, self._entries[found - 1], count)

    def _dele(self, argument: str) -> events.Event | None:
        found = self._message(argument)
        if isinstance(found, Response):
            return self._refuse(found)
        self._deleted.add(found - 1)
        self._send(responses.ok(f"message {found} deleted"))
        return None

    def _rset(self, argument: str) -> events.Event | None:
        if argument.strip():
            return self._error(responses.SYNTAX)
        self._deleted.clear()
        self._send(self._maildrop_status())
        return None

    def _noop(self, argument: str) -> events.Event | None:
        if argument.strip():
            return self._error(responses.SYNTAX)
        self._send(responses.OK)
        return None

    # ------------------------------------------------------------------
    # Helpers

    def _message(self, argument: str) -> int | Response:
        """A message number that names a message not deleted, or the
        error to send (RFC 1939 §5: deleted messages are not there)."""
        number = _number(argument.strip())
        if number is None:
            return responses.SYNTAX
        if not 1 <= number <= len(self._entries):
            return responses.NO_SUCH_MESSAGE
        if number - 1 in self._deleted:
            return responses.ALREADY_DELETED
        return number

    def _refuse(self, response: Response) -> events.Event | None:
        # A malformed number counts towards the error limit; asking
        # for a message that is not there is an honest mistake.
        if response is responses.SYNTAX:
            return self._error(response)
        self._send(response)
        return None

    def _totals(self) -> tuple[int, int]:
        live = [e for i, e in enumerate(self._entries) if i not in self._deleted]
        return len(live), sum(e.size for e in live)

    def _maildrop_status(self) -> Response:
        return responses.maildrop(*self._totals())

    def _send(self, response: Response) -> None:
        self._out.append(response.wire)

    def _multiline(self, header: Response, lines: Iterable[str]) -> None:
        body = "".join(f"{line}\r\n" for line in lines)
        self._out.append(header.wire + stuff(body.encode()) + _END)

    def _answer(self, *kinds: type) -> events.Event:
        event = self._waiting
        if event is None or not isinstance(event, kinds):
            raise LocalProtocolError(
                f"answer for {'/'.join(k.__name__ for k in kinds)} "
                f"while {type(event).__name__ if event else 'nothing'} is pending"
            )
        self._waiting = None
        return event


_ALL = frozenset(State)
_AUTHORIZATION = frozenset({State.AUTHORIZATION})
_TRANSACTION = frozenset({State.TRANSACTION})

_COMMANDS: dict[str, tuple[Handler, frozenset[State]]] = {
    "USER": (ServerConnection._user_cmd, _AUTHORIZATION),
    "PASS": (ServerConnection._pass, _AUTHORIZATION),
    "AUTH": (ServerConnection._auth, _AUTHORIZATION),
    "APOP": (ServerConnection._apop, _AUTHORIZATION),
    "STLS": (ServerConnection._stls, _AUTHORIZATION),
    "CAPA": (ServerConnection._capa, _ALL),
    "QUIT": (ServerConnection._quit, _ALL),
    "STAT": (ServerConnection._stat, _TRANSACTION),
    "LIST": (ServerConnection._list, _TRANSACTION),
    "UIDL": (ServerConnection._uidl, _TRANSACTION),
    "RETR": (ServerConnection._retr, _TRANSACTION),
    "TOP": (ServerConnection._top, _TRANSACTION),
    "DELE": (ServerConnection._dele, _TRANSACTION),
    "RSET": (ServerConnection._rset, _TRANSACTION),
    "NOOP": (ServerConnection._noop, _TRANSACTION),
}


def _number(text: str) -> int | None:
    if not (text.isascii() and text.isdigit()) or len(text) > _MAX_DIGITS:
        return None
    return int(text)


def _is_md5_hex(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdefABCDEF" for c in text)
