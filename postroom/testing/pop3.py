"""A POP3 core driver for tests: answers every event from memory.

``FakeMaildrop`` plays the part of ``server/pop3_session.py`` without
sockets, clocks or files: accounts are a dict of passwords, the
maildrop a list of messages, and a login for a user in ``locked``
gets ``[IN-USE]``. ``run`` feeds input in the chunks given and returns
everything the core wrote plus the events it raised, so a test can
compare a conversation fed whole with the same one cut anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from postroom.protocol.pop3 import content, events, responses
from postroom.protocol.pop3.events import NEED_DATA, PAUSED, Entry
from postroom.protocol.pop3.server import Options, ServerConnection

ALICE = "alice@postroom.test"
PASSWORD = "secret pass"
APOP_SECRET = "apop-secret"


def message(n: int, body_lines: int = 3) -> bytes:
    """A small stored message (CRLF), distinct for each *n*."""
    body = "".join(f"line {i} of message {n}\r\n" for i in range(body_lines))
    return (
        f"From: sender@example.org\r\nSubject: message {n}\r\n\r\n{body}"
    ).encode()


@dataclass
class FakeMaildrop:
    messages: list[bytes] = field(default_factory=lambda: [message(1), message(2)])
    passwords: dict[str, str] = field(default_factory=lambda: {ALICE: PASSWORD})
    locked: set[str] = field(default_factory=set)
    # Keys whose content has vanished since login (an IMAP expunge).
    gone: set[int] = field(default_factory=set)
    update_ok: bool = True
    removed: list[int] = field(default_factory=list)

    def entries(self) -> list[Entry]:
        return [
            Entry(key, len(data), f"7.{key}")
            for key, data in enumerate(self.messages, 1)
        ]

    def answer(self, core: ServerConnection, event: events.Event) -> None:
        if isinstance(event, events.Login):
            self._login(core, event.username, self.passwords.get(event.username)
                        == event.password)
        elif isinstance(event, events.Apop):
            ok = content.apop_matches(
                core.options.apop_timestamp, APOP_SECRET, event.digest
            )
            self._login(core, event.username, ok and event.username in self.passwords)
        elif isinstance(event, events.StartTls):
            core.tls_started()
        elif isinstance(event, events.Retrieve):
            if event.entry.key in self.gone:
                core.refuse_retrieve(responses.MESSAGE_GONE)
            else:
                core.send_message(self.messages[event.entry.key - 1])
        elif isinstance(event, events.Update):
            self.removed += [e.key for e in event.deleted]
            core.finish_update(self.update_ok)

    def _login(self, core: ServerConnection, user: str, ok: bool) -> None:
        if not ok:
            core.refuse_login(responses.AUTH_FAILED)
        elif user in self.locked:
            core.refuse_login(responses.MAILDROP_LOCKED)
        else:
            core.accept_login(self.entries())


@dataclass
class Run:
    output: bytes
    events: list[str]
    closed: bool


def run(
    chunks: list[bytes],
    options: Options | None = None,
    maildrop: FakeMaildrop | None = None,
) -> Run:
    """Greet, feed *chunks* (then EOF), answer every event; the result."""
    core = ServerConnection(options or Options(plaintext_allowed=True))
    drop = maildrop or FakeMaildrop()
    core.greet()
    out = [core.data_to_send()]
    seen: list[str] = []
    closed = False
    for chunk in [*chunks, b""]:
        core.receive_data(chunk)
        while not closed:
            event = core.next_event()
            if event is NEED_DATA:
                break
            assert event is not PAUSED, "the fake answers every event"
            assert isinstance(event, events.Event)
            seen.append(type(event).__name__)
            if isinstance(event, events.Closed):
                closed = True
                break
            drop.answer(core, event)
        out.append(core.data_to_send())
    return Run(b"".join(out), seen, closed)
