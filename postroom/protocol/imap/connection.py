"""The server side of IMAP4rev1 (RFC 3501) as a sans-I/O state machine.

Theory of operation
-------------------
The driver calls ``greet()`` once, feeds whatever bytes arrive to
``receive_data`` (``b""`` at end of file), and calls ``next_event``
until it returns ``NEED_DATA`` or ``PAUSED``, writing
``data_to_send()`` (or ``chunks_to_send()``) to the peer before it
waits. An event that needs storage or policy pauses the core until the
driver calls ``respond`` with data (see ``events.py``); the core renders
every response itself. The core never blocks, sleeps or reads a clock.

Streaming. A FETCH answer may name thousands of messages, and rendering
them all before the first byte leaves would hold the whole response in
memory and keep the client waiting. ``respond`` renders only the first
``ImapOptions.render_budget`` octets of FETCH responses; while the rest
is pending, ``streaming`` is true and ``chunks_to_send(budget)`` renders
about *budget* more octets (whole ``* n FETCH`` responses, at least
one) before it hands them out, the tagged OK last. A driver that does
not care calls ``data_to_send()`` or ``chunks_to_send()``, which render
the rest at once; and ``next_event`` renders the rest before it reads
the next command, so responses can never come out of order. An error
from a message's loader comes out of whichever call was rendering
(``respond``, ``chunks_to_send``, ``next_event``); the response cannot
be completed then, and the driver should ``close()``.

States (``State``), RFC 3501 §3::

    NOT_AUTHENTICATED --LOGIN/AUTHENTICATE ok--> AUTHENTICATED
    AUTHENTICATED --SELECT/EXAMINE ok--> SELECTED
    SELECTED --CLOSE/UNSELECT, or SELECT refused--> AUTHENTICATED
    any --LOGOUT, BYE, end of file--> LOGOUT

Within a state the input is read in one of four modes: commands, the
lines of an AUTHENTICATE exchange, IDLE (waiting for DONE), and after
STARTTLS nothing at all until ``tls_started()``.

Rules the core enforces (here and, one function per command, in
``handlers.py``), so that no driver has to:

* Which command is valid in which state. A command that is never valid
  in the current state is a protocol error and gets BAD (RFC 3501 §7.1.3:
  "command unknown or arguments invalid"), like a syntax error; NO is
  kept for refusals of a valid request (LOGINDISABLED, a read-only
  mailbox, whatever the driver refuses).
* STARTTLS (RFC 3501 §6.2.1, RFC 2595 §3.1, the CVE-2011-0411 class):
  bytes the client pipelined after STARTTLS are thrown away, and so is
  anything arriving before ``tls_started()``. Capabilities are recomputed
  after TLS and after login (and sent in the tagged OK of LOGIN).
* LOGINDISABLED: without TLS, LOGIN and AUTHENTICATE are refused with
  ``NO [PRIVACYREQUIRED]`` unless ``login_without_tls`` is set.
* Literals and line lengths are bounded (``framing.py``); a client that
  piles up ``max_bad_commands`` BADs in a row is told BYE.
* Sequence numbers: the session's view of the mailbox (``view.py``)
  and when untagged EXPUNGE/EXISTS/FETCH news may be sent.

What the core does not decide: passwords, mailboxes and messages. Those
are events the driver answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from postroom.errors import LocalProtocolError
from postroom.protocol import sasl
from postroom.protocol.imap import (
    answers,
    commands,
    events,
    fetch,
    framing,
    handlers,
    responses,
)
from postroom.protocol.imap.events import NEED_DATA, PAUSED, Event
from postroom.protocol.imap.framing import Framer
from postroom.protocol.imap.listing import ListOptions
from postroom.protocol.imap.states import Mode, State
from postroom.protocol.imap.syntax import ATOM_CHARS, Cursor, ParseError
from postroom.protocol.imap.view import MailboxView

__all__ = ["Chunk", "ImapConnection", "ImapOptions", "Mode", "State"]


@dataclass
class ImapOptions:
    """What this listener offers; ``tls_active`` is updated by the core."""

    tls_available: bool = False
    tls_active: bool = False
    login_without_tls: bool = False
    max_line: int = 65_536
    max_literal: int = 64 * 1024 * 1024
    max_literal_unauthenticated: int = 8192  # enough for any password
    max_command: int = 128 * 1024 * 1024  # MULTIAPPEND holds all at once
    max_bad_commands: int = 20
    delimiter: str = "/"
    greeting: str = "Postroom ready."
    server_id: dict[str, str] = field(default_factory=lambda: {"name": "Postroom"})
    # FETCH responses rendered by respond() itself; the rest streams.
    render_budget: int = 64 * 1024


Chunk = bytes | memoryview


class ImapConnection:
    """One IMAP conversation, seen from the server."""

    def __init__(self, options: ImapOptions) -> None:
        self.options = options
        self.state = State.NOT_AUTHENTICATED
        self.mode = Mode.COMMAND
        self.username: str | None = None
        self.mailbox: str | None = None
        self.view: MailboxView | None = None
        self.utf8 = False  # UTF8=ACCEPT enabled (RFC 6855)
        self._framer = Framer(
            options.max_line,
            min(options.max_literal, options.max_literal_unauthenticated),
            options.max_command,
        )
        self._out: list[Chunk] = []
        # FETCH responses still to render, one list of chunks each; the
        # iterator completes the command when it runs out (answers.py).
        self._stream: Iterator[list[Chunk]] | None = None
        self._fetch_plans: dict[tuple[object, ...], fetch.Plan] = {}
        self._eof = False
        self._greeted = False
        self._pending: Event | None = None
        self._announce: list[Event] = []
        self._tag = "*"
        self._verb = ""
        self._label = ""  # the command as named in the tagged OK
        self._sasl: sasl.SaslServer | None = None
        self._bad_in_a_row = 0
        self._list_options = ListOptions()  # LIST's, kept for respond

    # ------------------------------------------------------------------
    # Driver interface

    def greet(self, *, preauth_user: str | None = None) -> None:
        """Send the greeting; with *preauth_user* the session starts
        authenticated (PREAUTH, RFC 3501 §7.1.4)."""
        if self._greeted:
            raise LocalProtocolError("greeting already sent")
        self._greeted = True
        if preauth_user is not None:
            self._logged_in(preauth_user)
            status = "PREAUTH"
        else:
            status = "OK"
        self._send(
            responses.status_line(
                "*", status, self.options.greeting, self._capability_code()
            )
        )

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; ``b""`` means end of file."""
        if not data:
            self._eof = True
        elif self.mode is not Mode.TLS_PENDING and self.state is not State.LOGOUT:
            self._framer.buf += data  # Cleartext after STARTTLS is dropped.

    def data_to_send(self) -> bytes:
        """Everything the core wants written, as one ``bytes``."""
        if self._stream is not None:
            self._render(None)
        out = b"".join(self._out)
        self._out.clear()
        return out

    def chunks_to_send(self, budget: int | None = None) -> list[Chunk]:
        """The same as pieces, big message bodies uncopied. With a
        *budget*, a streamed FETCH response is rendered only that far
        (see ``streaming``); without, to its end."""
        if self._stream is not None:
            self._render(budget)
        out, self._out = self._out, []
        return out

    @property
    def streaming(self) -> bool:
        """A FETCH response is still being rendered: call
        ``chunks_to_send(budget)`` until this turns false."""
        return self._stream is not None

    @property
    def awaiting_answer(self) -> bool:
        return self._pending is not None

    @property
    def buffered(self) -> int:
        return len(self._framer.buf)

    def capabilities(self) -> list[str]:
        o = self.options
        caps = ["IMAP4rev1", "SASL-IR", "LITERAL+", "ID", "ENABLE", "IDLE"]
        if self.state is State.NOT_AUTHENTICATED:
            if o.tls_available and not o.tls_active:
                caps.append("STARTTLS")
            if self._login_allowed():
                caps.append("AUTH=PLAIN")
            else:
                caps.append("LOGINDISABLED")
            return caps
        return [
            *caps,
            "NAMESPACE",
            "UNSELECT",
            "UIDPLUS",
            "MOVE",
            "CHILDREN",
            "LIST-EXTENDED",
            "SPECIAL-USE",
            "MULTIAPPEND",
            "BINARY",
            "UTF8=ACCEPT",
        ]

    def next_event(self) -> Event | events._Sentinel:
        """The next event, or NEED_DATA / PAUSED."""
        if self._stream is not None:
            self._render(None)  # The driver did not stream: finish it.
        while True:
            if self._pending is not None:
                return PAUSED
            if self._announce:
                return self._announce.pop(0)
            if self.state is State.LOGOUT:
                return NEED_DATA
            if self.mode is Mode.TLS_PENDING:
                return self._hang_up() if self._eof else NEED_DATA
            if self.mode is Mode.COMMAND:
                result = self._next_command()
            else:
                result = self._next_line()
            if result is NEED_DATA:
                return self._hang_up() if self._eof else NEED_DATA
            if result is None:
                continue
            assert not isinstance(result, events._Sentinel)
            self._pending = result
            return result

    def respond(self, answer: events.Answer) -> None:
        """Answer the outstanding event (see ``events.py`` for which
        answers each event takes)."""
        event = self._pending
        if event is None:
            raise LocalProtocolError("no event is waiting for an answer")
        self._pending = None
        if isinstance(answer, events.Refused):
            self._refused(event, answer)
            return
        handler = answers.HANDLERS.get(type(event))
        if handler is None:  # pragma: no cover - informational events
            raise LocalProtocolError(f"{type(event).__name__} takes no answer")
        handler(self, event, answer)

    def update(self, news: events.MailboxUpdate) -> None:
        """Changes to the selected mailbox made elsewhere; they are sent
        when allowed (at once while IDLE)."""
        if self.view is None:
            return
        self.view.note(news.added, news.expunged, news.flags, news.recent)
        if self.mode is Mode.IDLE:
            self._out.extend(self.view.flush(expunges=True))

    def alert(self, text: str) -> None:
        """Queue ``* OK [ALERT] text``: a message the client must show its
        user (RFC 3501 §7.1), such as a quota warning. Untagged status
        responses may be sent at any time."""
        self._send(responses.status_line("*", "OK", text, "ALERT"))

    def tls_started(self) -> None:
        """The driver finished the TLS handshake after our OK."""
        if self.mode is not Mode.TLS_PENDING:
            raise LocalProtocolError("tls_started() without STARTTLS")
        self.options.tls_active = True
        self.mode = Mode.COMMAND

    def close(self, text: str = "Server shutting down") -> None:
        """End the conversation from our side (timeout, shutdown)."""
        if self.state is not State.LOGOUT:
            self._send(responses.status_line("*", "BYE", text))
        self._pending = None
        self._stream = None  # BYE ends a response between two messages.
        self.state = State.LOGOUT

    # ------------------------------------------------------------------
    # Output

    def _logged_in(self, username: str) -> None:
        self.username = username
        self.state = State.AUTHENTICATED
        self._framer.max_literal = self.options.max_literal

    def _send(self, data: Chunk) -> None:
        self._out.append(data)

    def _render(self, budget: int | None) -> None:
        """Render streamed responses into the output until about
        *budget* octets are out (None: all of them)."""
        stream = self._stream
        assert stream is not None
        out = self._out
        size = 0
        for chunks in stream:
            out += chunks
            if budget is not None:
                for chunk in chunks:
                    size += len(chunk)
                if size >= budget:
                    return
        self._stream = None

    def _capability_code(self) -> str:
        return "CAPABILITY " + " ".join(self.capabilities())

    def _login_allowed(self) -> bool:
        return self.options.tls_active or self.options.login_without_tls

    def _complete(self, status: str, text: str = "", code: str | None = None) -> None:
        """The tagged response of the current command, after any news
        the rules let us send (RFC 3501 §7.4.1)."""
        if self.view is not None:
            held = self._label in ("FETCH", "STORE", "SEARCH")
            self._out.extend(self.view.flush(expunges=not held))
        if status == "BAD":
            self._bad_in_a_row += 1
        else:
            self._bad_in_a_row = 0
        self._send(
            responses.status_line(
                self._tag, status, text or f"{self._label} completed", code
            )
        )
        if self._bad_in_a_row >= self.options.max_bad_commands:
            self._send(responses.status_line("*", "BYE", "Too many invalid commands"))
            self._end(by_peer=False)

    def _end(self, *, by_peer: bool) -> None:
        self.state = State.LOGOUT
        self._announce.append(events.Closed(by_peer=by_peer))

    def _hang_up(self) -> events.Closed:
        self.state = State.LOGOUT
        return events.Closed(by_peer=True)

    # ------------------------------------------------------------------
    # Commands

    def _next_command(self) -> Event | events._Sentinel | None:
        frame = self._framer.next_frame()
        if frame is None:
            return NEED_DATA
        if isinstance(frame, framing.Continue):
            self._send(responses.READY_FOR_LITERAL)
            return None
        if isinstance(frame, framing.Refused):
            self._tag, self._verb, self._label = frame.tag, "", ""
            if frame.reason == "line":
                self._complete("BAD", "Command line too long")
            elif frame.synchronizing:
                self._complete("NO", "Literal too big", "TOOBIG")
            else:
                self._complete("BAD", "Literal too big", "TOOBIG")
            return None
        return self._dispatch(frame.parts)

    def _dispatch(self, parts: framing.Parts) -> Event | None:
        cur = Cursor(parts)
        tag = framing.tag_of(cur.text)
        self._tag, self._verb, self._label = tag, "", ""
        if tag == "*" or cur.text[len(tag) : len(tag) + 1] != b" ":
            self._tag = "*"
            self._complete("BAD", "Missing or invalid tag")
            return None
        cur.pos = len(tag) + 1
        verb = cur.run(ATOM_CHARS).decode("ascii").upper()
        uid = verb == "UID"
        if uid:
            verb = ""
            if cur.maybe(b" "):
                verb = cur.run(ATOM_CHARS).decode("ascii").upper()
            if verb not in handlers.UID_VERBS:
                self._complete("BAD", "Unknown UID command")
                return None
        self._verb = verb
        self._label = f"UID {verb}" if uid else verb
        spec = handlers.COMMANDS.get(verb)
        if spec is None:
            self._complete("BAD", "Unknown command")
            return None
        states, handler, takes_args = spec
        takes_args = takes_args or (uid and verb == "EXPUNGE")
        if self.state not in states:
            self._complete("BAD", handlers.wrong_state(self.state, states))
            return None
        try:
            if takes_args:
                cur.sp()
            else:
                cur.end()
            return handler(self, cur, uid)
        except ParseError as e:
            self._complete(e.status, e.text, e.code)
            return None

    def ctx(self) -> commands.Context:
        return commands.Context(self.options.delimiter, self.utf8, self.view)

    def _sasl_outcome(self, outcome: sasl.Outcome) -> Event | None:
        if isinstance(outcome, sasl.Challenge):
            self._send(b"+ " + sasl.encode_challenge(outcome) + b"\r\n")
            return None
        self.mode = Mode.COMMAND
        self._sasl = None
        if isinstance(outcome, sasl.Credentials):
            return events.Login(
                outcome.username, outcome.password, outcome.mechanism, outcome.authzid
            )
        if outcome.reason == "cancelled":
            self._complete("BAD", "Authentication cancelled")
        else:
            self._complete("NO", "Authentication failed", "AUTHENTICATIONFAILED")
        return None

    def _next_line(self) -> Event | events._Sentinel | None:
        line = self._framer.next_line()
        if line is None:
            return NEED_DATA
        if self.mode is Mode.AUTHENTICATE:
            assert self._sasl is not None
            try:
                text = line.decode("ascii")
            except UnicodeDecodeError:
                text = "\0"
            return self._sasl_outcome(self._sasl.step(text))
        # IDLE (RFC 2177): only DONE ends it; anything else is BAD.
        self.mode = Mode.COMMAND
        self._announce.append(events.IdleDone())
        if line.upper() == b"DONE":
            self._complete("OK", "IDLE terminated")
        else:
            self._complete("BAD", "Expected DONE")
        return None

    def _refused(self, event: Event, answer: events.Refused) -> None:
        self._complete("BAD" if answer.bad else "NO", answer.text, answer.code)
