"""Dovecot reads the Maildirs we write, and we read what Dovecot
changes: flags in file names, keywords through ``dovecot-keywords``,
Maildir++ folders in modified UTF-7."""

from __future__ import annotations

import imaplib
import os
from collections.abc import Callable, Iterator

import pytest

from postroom.mailbox import maildir, names
from postroom.mailbox.messages import Mailbox
from postroom.testing import dovecot, peers

USER, PASSWORD = "alice", "secret"
MESSAGE = b"From: bob@example.test\r\nSubject: hi\r\n\r\nbody\r\n"


@pytest.fixture
def instance(
    require_tool: Callable[[str], str], missing_peer: Callable[[str], None]
) -> Iterator[dovecot.DovecotInstance]:
    require_tool("dovecot")
    if os.geteuid() != 0:
        missing_peer("a private Dovecot needs root")
    running = dovecot.start_dovecot(peers.make_root(), {USER: PASSWORD})
    try:
        yield running
    finally:
        running.stop()


def login(instance: dovecot.DovecotInstance) -> imaplib.IMAP4:
    client = imaplib.IMAP4(peers.LOOPBACK, instance.imap_port, timeout=10)
    client.login(USER, PASSWORD)
    return client


def test_dovecot_reads_our_flags_keywords_and_folders(
    instance: dovecot.DovecotInstance,
) -> None:
    root = instance.maildir(USER)
    inbox = Mailbox("INBOX", root, root, fsync=False)
    inbox.append(MESSAGE, ["\\Seen"])
    uid = inbox.append(MESSAGE, ["\\Flagged", "\\Answered", "$Label1"])
    inbox.refresh()
    inbox.store_flags([uid], ["Project"], "add")
    folder = names.folder_dir(root, "Entwürfe")
    maildir.make_maildir(folder, fsync=False)
    Mailbox("Entwürfe", folder, root, fsync=False).append(MESSAGE)
    dovecot.chown_tree(root)

    client = login(instance)
    try:
        _typ, listed = client.list()
        assert any(
            b'"Entw&APw-rfe"' in line or b"Entw&APw-rfe" in line
            for line in listed
            if line
        )
        client.select("INBOX")
        _typ, data = client.fetch("1:2", "(FLAGS)")
        flags = [item for item in data if isinstance(item, bytes)]
        assert b"\\Seen" in flags[0]
        for flag in (b"\\Flagged", b"\\Answered", b"$Label1", b"Project"):
            assert flag in flags[1], flags[1]
        _typ, body = client.fetch("1", "(BODY.PEEK[])")
        assert body[0][1] == MESSAGE

        # Now Dovecot changes flags and expunges; our next refresh sees it.
        client.store("2", "+FLAGS", "(\\Deleted)")
        client.store("1", "-FLAGS", "(\\Seen)")
        client.expunge()
    finally:
        client.logout()

    changes = inbox.refresh()
    assert changes.expunged == [uid]
    assert [(m.uid, m.flags) for m in changes.flags] == [(1, frozenset())]
