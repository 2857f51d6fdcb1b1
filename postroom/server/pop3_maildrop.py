"""A POP3 maildrop: one user's INBOX, locked for the session.

RFC 1939 §8 expects the server to hold an exclusive lock on the
maildrop from a successful login to the end of the UPDATE state, so
that two POP3 sessions never number the same messages differently or
both delete them. ``MailStore.pop3_lock`` takes that lock (across
processes: our workers are processes) and raises ``MailboxLocked`` at
once when another session has it; we answer ``-ERR [IN-USE]``
(RFC 2449 §8.1.2). IMAP sessions take no such lock, so a message may
vanish under us: RETR then says so, and DELE of it is harmless.

Unique ids (UIDL, RFC 1939 §7) are ``<uidvalidity>.<uid>``: the store
never gives a UID out twice under one UIDVALIDITY, and a rebuilt index
gets a new UIDVALIDITY, so an id never comes back for another message.
Clients then download the folder again, which is the safe failure.

Every method here blocks on the file system (the index is SQLite);
the session calls ``open`` and ``remove`` through a thread. ``read``
runs on the event loop: a message file is usually in the page cache,
and a thread hop per RETR costs more than the read. For the same
reason ``read`` keeps each message's path as a string from the
listing and reads it with one ``os.read`` of the known size (plus
one octet, to notice a file larger than listed); only a file renamed
since (a flag change by IMAP) goes through the store's own lookup.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable

from postroom.mailbox.store import Mailbox, MailStore
from postroom.protocol.pop3.events import Entry


class Maildrop:
    """*user*'s INBOX for one POP3 session (see the module docstring)."""

    def __init__(self, store: MailStore, user: str) -> None:
        self.user = user
        self._store = store
        self._stack = contextlib.ExitStack()
        self._mailbox: Mailbox | None = None
        # key -> (path, size) for the fast read; see the docstring.
        self._files: dict[int, tuple[str, int]] = {}

    def open(self) -> list[Entry]:
        """Lock the maildrop and list it. Raises MailboxLocked when
        another session holds it, MailboxError or OSError on trouble;
        nothing stays held after an exception."""
        with contextlib.ExitStack() as stack:
            stack.enter_context(self._store.pop3_lock(self.user))
            mailbox = self._store.open(self.user)
            stack.callback(mailbox.close)
            infos = mailbox.messages()
            entries = [
                Entry(m.uid, m.size, f"{mailbox.uidvalidity}.{m.uid}") for m in infos
            ]
            self._files = {
                m.uid: (os.fspath(mailbox.path(m.uid)), m.size) for m in infos
            }
            self._stack = stack.pop_all()
        self._mailbox = mailbox
        return entries

    def read(self, key: int) -> bytes:
        """The stored bytes of message *key*. Raises KeyError or
        FileNotFoundError when it has been expunged by someone else."""
        assert self._mailbox is not None
        path, size = self._files[key]
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return self._mailbox.read(key)
        try:
            data = os.read(fd, size + 1)
            if len(data) <= size:
                return data
            # Larger than listed: read on to the end, whatever it is.
            parts = [data]
            while chunk := os.read(fd, 1 << 20):
                parts.append(chunk)
            return b"".join(parts)
        finally:
            os.close(fd)

    def remove(self, keys: Iterable[int]) -> None:
        """Expunge *keys* (the UPDATE state). Messages already gone
        count as removed."""
        assert self._mailbox is not None
        self._mailbox.expunge(list(keys))

    def mark_seen(self, keys: Iterable[int]) -> None:
        """Add \\Seen to *keys* (messages downloaded by RETR), as
        Dovecot does at QUIT, so IMAP clients show them as read."""
        assert self._mailbox is not None
        self._mailbox.store_flags(keys, ["\\Seen"], "add")

    def close(self) -> None:
        """Release the mailbox and the lock; safe to call twice."""
        self._mailbox = None
        self._stack.close()
