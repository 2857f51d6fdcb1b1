"""A synchronous driver and an in-memory store for the IMAP core tests.

``FakeStore`` holds mailboxes of messages; ``CoreDriver`` owns an
``ImapConnection`` and answers every event from the store the way the
real session is meant to (one user, alice/secret), so a test feeds bytes
and reads back what the core wrote. Like h11's ``ConnectionPair`` it
keeps every event and every output byte.

``Transcript`` is a recorded conversation (``C:``/``S:`` lines, as the
SMTP transcripts): all client lines are fed, then the whole output is
compared, so the same transcript can be fed split at any byte.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from postroom.protocol.imap import events as E
from postroom.protocol.imap.connection import ImapConnection, ImapOptions

USERS = {"alice": "secret"}
WHEN = dt.datetime(2024, 3, 5, 10, 20, 30, tzinfo=dt.timezone(dt.timedelta(hours=1)))


@dataclass
class Stored:
    content: bytes
    flags: set[str] = field(default_factory=set)
    internaldate: dt.datetime = WHEN


@dataclass
class FakeMailbox:
    uidvalidity: int
    uidnext: int = 1
    messages: dict[int, Stored] = field(default_factory=dict)
    subscribed: bool = False
    special_use: str | None = None

    def add(
        self,
        content: bytes,
        flags: set[str] | None = None,
        when: dt.datetime | None = None,
    ) -> int:
        uid = self.uidnext
        self.uidnext += 1
        self.messages[uid] = Stored(content, set(flags or ()), when or WHEN)
        return uid


class FakeStore:
    def __init__(self) -> None:
        self.mailboxes: dict[str, FakeMailbox] = {}
        self._validity = 1000
        self.create("INBOX")

    def create(self, name: str, special_use: str | None = None) -> FakeMailbox:
        self._validity += 1
        box = FakeMailbox(self._validity, special_use=special_use)
        self.mailboxes[name] = box
        return box


def data(uid: int, stored: Stored, content: bool) -> E.MessageData:
    return E.MessageData(
        uid,
        tuple(sorted(stored.flags)),
        stored.internaldate,
        len(stored.content),
        stored.content if content else None,
    )


class CoreDriver:
    def __init__(
        self,
        options: ImapOptions | None = None,
        store: FakeStore | None = None,
        *,
        answer: Callable[[E.Event], E.Answer | None] | None = None,
    ) -> None:
        self.conn = ImapConnection(options or ImapOptions(login_without_tls=True))
        self.store = store or FakeStore()
        self.events: list[E.Event] = []
        self.output = bytearray()
        self.selected: str | None = None
        self.override = answer
        self.conn.greet()
        self.output += self.conn.data_to_send()

    def send(self, data: bytes) -> bytes:
        """Feed *data*, answer all events; the bytes written meanwhile."""
        self.conn.receive_data(data)
        return self.pump()

    def eof(self) -> bytes:
        self.conn.receive_data(b"")
        return self.pump()

    def pump(self) -> bytes:
        start = len(self.output)
        while True:
            event = self.conn.next_event()
            if event is E.NEED_DATA or event is E.PAUSED:
                break
            assert not isinstance(event, E._Sentinel)
            self.events.append(event)
            if isinstance(event, E.IdleDone | E.Closed):
                continue
            answer = self.override(event) if self.override else None
            self.conn.respond(answer or self.answer(event))
        self.output += self.conn.data_to_send()
        return bytes(self.output[start:])

    # -- the fake server's decisions ------------------------------------

    def box(self) -> FakeMailbox:
        assert self.selected is not None
        return self.store.mailboxes[self.selected]

    def answer(self, ev: E.Event) -> E.Answer:
        mailboxes = self.store.mailboxes
        if isinstance(ev, E.Login):
            if USERS.get(ev.username) == ev.password:
                return E.Done()
            return E.Refused("Authentication failed", "AUTHENTICATIONFAILED")
        if isinstance(ev, E.Select):
            self.selected = None
            box = mailboxes.get(ev.mailbox)
            if box is None:
                return E.Refused("No such mailbox", "NONEXISTENT")
            self.selected = ev.mailbox
            uids = sorted(box.messages)
            flags = [box.messages[u].flags for u in uids]
            unseen = [i + 1 for i, f in enumerate(flags) if "\\Seen" not in f]
            return E.MailboxSnapshot(
                uids,
                box.uidvalidity,
                box.uidnext,
                first_unseen=unseen[0] if unseen else None,
            )
        if isinstance(ev, E.Create):
            if ev.mailbox in mailboxes:
                return E.Refused("Mailbox exists", "ALREADYEXISTS")
            self.store.create(ev.mailbox)
            return E.Done()
        if isinstance(ev, E.Delete):
            if mailboxes.pop(ev.mailbox, None) is None:
                return E.Refused("No such mailbox", "NONEXISTENT")
            return E.Done()
        if isinstance(ev, E.Rename):
            if ev.mailbox not in mailboxes:
                return E.Refused("No such mailbox", "NONEXISTENT")
            if ev.new_name in mailboxes:
                return E.Refused("Mailbox exists", "ALREADYEXISTS")
            mailboxes[ev.new_name] = mailboxes.pop(ev.mailbox)
            return E.Done()
        if isinstance(ev, E.Subscribe | E.Unsubscribe):
            if ev.mailbox not in mailboxes:
                return E.Refused("No such mailbox", "NONEXISTENT")
            mailboxes[ev.mailbox].subscribed = isinstance(ev, E.Subscribe)
            return E.Done()
        if isinstance(ev, E.List):
            return E.Listing(
                [
                    E.MailboxInfo(n, b.subscribed, special_use=b.special_use)
                    for n, b in sorted(mailboxes.items())
                ]
            )
        if isinstance(ev, E.Status):
            box = mailboxes.get(ev.mailbox)
            if box is None:
                return E.Refused("No such mailbox", "NONEXISTENT")
            values = {
                "MESSAGES": len(box.messages),
                "RECENT": 0,
                "UIDNEXT": box.uidnext,
                "UIDVALIDITY": box.uidvalidity,
                "UNSEEN": sum("\\Seen" not in m.flags for m in box.messages.values()),
            }
            return E.StatusData(values)
        if isinstance(ev, E.Append):
            box = mailboxes.get(ev.mailbox)
            if box is None:
                return E.Refused("No such mailbox", "TRYCREATE")
            uids = [
                box.add(m.content, set(m.flags), m.internaldate) for m in ev.messages
            ]
            if ev.mailbox == self.selected:
                self.conn.update(E.MailboxUpdate(added=uids))
            return E.Appended(box.uidvalidity, uids)
        if isinstance(ev, E.Poll | E.Idle | E.StartTls):
            return E.Done()
        if isinstance(ev, E.Close):
            if ev.expunge:
                self._expunge(None)
            self.selected = None
            return E.Done()
        if isinstance(ev, E.Expunge):
            return E.Expunged(self._expunge(ev.uids))
        if isinstance(ev, E.Search):
            box = self.box()
            return E.Messages(
                [data(u, m, True) for u, m in sorted(box.messages.items())]
            )
        if isinstance(ev, E.Fetch):
            box = self.box()
            out = []
            for uid in ev.uids:
                stored = box.messages.get(uid)
                if stored is None:
                    continue
                if ev.request.sets_seen and not ev.read_only:
                    stored.flags.add("\\Seen")
                out.append(data(uid, stored, ev.request.needs_content))
            return E.Messages(out)
        if isinstance(ev, E.Store):
            box = self.box()
            out = []
            for uid in ev.uids:
                stored = box.messages[uid]
                if ev.mode == "set":
                    stored.flags = set(ev.flags)
                elif ev.mode == "add":
                    stored.flags |= set(ev.flags)
                else:
                    stored.flags -= set(ev.flags)
                out.append(data(uid, stored, False))
            return E.Messages(out)
        if isinstance(ev, E.Copy):
            target = mailboxes.get(ev.mailbox)
            if target is None:
                return E.Refused("No such mailbox", "TRYCREATE")
            box = self.box()
            new = [
                target.add(box.messages[u].content, box.messages[u].flags)
                for u in ev.uids
            ]
            if ev.move:
                for uid in ev.uids:
                    del box.messages[uid]
            return E.Copied(target.uidvalidity, list(ev.uids), new)
        raise AssertionError(f"unexpected event {ev!r}")

    def _expunge(self, only: tuple[int, ...] | None) -> list[int]:
        box = self.box()
        gone = [
            u
            for u, m in sorted(box.messages.items())
            if "\\Deleted" in m.flags and (only is None or u in only)
        ]
        for uid in gone:
            del box.messages[uid]
        return gone


# ----------------------------------------------------------------------
# Transcripts


_ESCAPES = {"r": b"\r", "n": b"\n", "t": b"\t", "0": b"\0", "\\": b"\\"}


def unescape(text: str) -> bytes:
    """Transcript text to bytes: the escapes \\r \\n \\t \\0 \\xHH
    and \\\\ (a backslash); any other backslash stands for itself, so
    flags like \\Seen need no doubling."""
    out = bytearray()
    i = 0
    while i < len(text):
        c = text[i]
        nxt = text[i + 1 : i + 2]
        if c == "\\" and nxt in _ESCAPES:
            out += _ESCAPES[nxt]
            i += 2
        elif c == "\\" and nxt == "x":
            out.append(int(text[i + 2 : i + 4], 16))
            i += 4
        else:
            out += c.encode("utf-8")
            i += 1
    return bytes(out)


@dataclass
class Transcript:
    name: str
    client: bytes
    server: list[str]
    setup: list[str]

    @classmethod
    def load(cls, path: Path) -> Transcript:
        client = bytearray()
        server: list[str] = []
        setup: list[str] = []
        for line in path.read_text().splitlines():
            if line.startswith("C: "):
                client += unescape(line[3:]) + b"\r\n"
            elif line.startswith("C+ "):
                client += unescape(line[3:])
            elif line.startswith("S: "):
                server.append(line[3:])
            elif line.startswith("O: "):
                setup.append(line[3:])
            elif line.strip() and not line.startswith("#"):
                raise ValueError(f"{path.name}: bad line {line!r}")
        return cls(path.stem, bytes(client), server, setup)

    def driver(self) -> CoreDriver:
        store = FakeStore()
        options = ImapOptions(login_without_tls=True)
        for item in self.setup:
            key, _, value = item.partition("=")
            if key == "message":
                # message=<mailbox>:<flags, comma-separated>:<escaped content>
                box, flags, content = value.split(":", 2)
                if box not in store.mailboxes:
                    store.create(box)
                store.mailboxes[box].add(
                    unescape(content), {f for f in flags.split(",") if f}
                )
            elif key == "mailbox":
                name, _, use = value.partition(":")
                store.create(name, use or None)
            elif key == "max_literal":
                options.max_literal = int(value)
            elif key == "max_line":
                options.max_line = int(value)
            else:
                raise ValueError(f"unknown option {key}")
        return CoreDriver(options, store)

    def expected_lines(self) -> list[str]:
        return self.server


def load_transcripts(directory: Path) -> list[Transcript]:
    return [Transcript.load(p) for p in sorted(directory.glob("*.txt"))]


def lines_of(output: bytes) -> list[str]:
    text = output.decode("utf-8", "replace")
    assert text.endswith("\r\n") or not text, text[-50:]
    return text.split("\r\n")[:-1]


def matches(expected: list[str], actual: list[str]) -> bool:
    if len(expected) != len(actual):
        return False
    for e, a in zip(expected, actual, strict=True):
        if e.endswith("*") and not e.endswith("\\*") and a.startswith(e[:-1]):
            continue
        if e != a:
            return False
    return True
