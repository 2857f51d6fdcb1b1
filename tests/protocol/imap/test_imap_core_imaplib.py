"""Python's imaplib as the client, talking to the core in memory.

``CoreIMAP4`` replaces imaplib's socket with a ``CoreDriver``: whatever
imaplib sends is fed to the core and whatever the core writes is what
imaplib reads. No network, but imaplib's own parser reads every
response, literals and continuation requests included, so a framing or
quoting mistake on our side fails here the way it would fail a client.
"""

from __future__ import annotations

import imaplib
from typing import Any

from imap_fakes import CoreDriver, FakeStore
from messages import MIXED, PLAIN


class CoreIMAP4(imaplib.IMAP4):
    def __init__(self, store: FakeStore) -> None:
        self._store = store
        super().__init__("core.invalid", 143)

    def open(self, host: str = "", port: int = 143, timeout: Any = None) -> None:
        self.host, self.port = host, port
        self.driver = CoreDriver(store=self._store)
        self._inbox = bytearray(self.driver.output)  # the greeting

    def send(self, data: bytes) -> None:
        self._inbox += self.driver.send(data)

    def read(self, size: int) -> bytes:
        out = bytes(self._inbox[:size])
        del self._inbox[:size]
        return out

    def readline(self) -> bytes:
        end = self._inbox.find(b"\n")
        assert end >= 0, f"client waits for a line; we sent {bytes(self._inbox)!r}"
        return self.read(end + 1)

    def shutdown(self) -> None:
        self.driver.eof()


def client() -> CoreIMAP4:
    store = FakeStore()
    store.mailboxes["INBOX"].add(PLAIN, {"\\Seen"})
    store.mailboxes["INBOX"].add(MIXED)
    store.create("Sent", "\\Sent")
    return CoreIMAP4(store)


def test_imaplib_session() -> None:
    imap = client()
    assert "IMAP4REV1" in imap.capabilities
    typ, _ = imap.login("alice", "secret")
    assert typ == "OK"
    typ, data = imap.select("INBOX")
    assert (typ, data) == ("OK", [b"2"])

    typ, data = imap.fetch("1:2", "(UID RFC822.SIZE BODY.PEEK[])")
    assert typ == "OK"
    assert data[0][1] == PLAIN and data[2][1] == MIXED
    assert b"RFC822.SIZE %d" % len(PLAIN) in data[0][0]

    typ, data = imap.uid("FETCH", "2", "(BODY.PEEK[3.TEXT] BODYSTRUCTURE)")
    assert typ == "OK" and data[0][1] == b"inner body"
    assert b'"mixed"' in data[1]

    typ, data = imap.search(None, "UNSEEN")
    assert data == [b"2"]
    typ, data = imap.store("2", "+FLAGS", "(\\Flagged)")
    assert imaplib.ParseFlags(data[0]) == (b"\\Flagged",)

    typ, data = imap.append("Sent", "(\\Seen)", None, b"Subject: s\r\n\r\nsent\r\n")
    assert typ == "OK" and data[0].startswith(b"[APPENDUID ")
    typ, data = imap.list()
    assert b'(\\HasNoChildren \\Sent) "/" Sent' in data
    typ, data = imap.status("Sent", "(MESSAGES)")
    assert data == [b"Sent (MESSAGES 1)"]
    typ, data = imap.copy("1", "Sent")
    assert typ == "OK"
    typ, _ = imap.store("1", "+FLAGS", "\\Deleted")
    typ, data = imap.expunge()
    assert data == [b"1"]
    typ, data = imap.namespace()
    assert data == [b'(("" "/")) NIL NIL']
    assert imap.logout()[0] == "BYE"


def test_imaplib_authenticate_plain() -> None:
    # imaplib waits for our "+" and sends the response on its own line.
    imap = client()
    typ, _ = imap.authenticate("PLAIN", lambda _: b"\0alice\0secret")
    assert typ == "OK" and imap.state == "AUTH"
