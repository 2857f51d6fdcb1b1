"""The per-folder index: which UID each Maildir file has.

Theory of operation
-------------------

Each folder (INBOX is the Maildir itself, others are ``.Name``
sub-Maildirs) has a small SQLite database, ``postroom-index.sqlite``,
with three tables: ``meta`` (UIDVALIDITY and UIDNEXT), ``messages``
(uid, the file's base name, its current name relative to the folder,
size, internal date) and ``keywords`` (number -> keyword name, the
numbering of the ``a``..``z`` letters in file names, mirrored in
Dovecot's ``dovecot-keywords`` file so Dovecot reads them alike).

Invariants:

- The Maildir is the truth about which messages exist and their flags;
  the index is the truth about UIDs. ``sync`` makes the index agree
  with the directory: a file nobody has numbered gets ``uidnext`` (in
  order of arrival: file mtime, then name), a numbered file that is
  gone loses its row, and a file renamed by someone else (flags
  changed by mutt, say) gets its new name recorded.
- UIDs only grow: ``uidnext`` is stored, never recomputed from the rows,
  so the UID of an expunged last message is never given out again
  (RFC 3501 §2.3.1.1).
- Every change happens inside ``BEGIN IMMEDIATE``: SQLite's write lock
  (fcntl byte-range locks on the database file) serializes the delivery
  process, SMTP, POP3 and IMAP workers across processes. File renames
  that go with a change (new/ -> cur/, a flag change, an append) happen
  inside the same transaction, so two Postroom processes never see a
  half-made change. Local delivery takes no lock at all: it only adds
  files to new/, which ``sync`` picks up.
- UIDVALIDITY is chosen when the index is made: one more than the last
  value given out in this user's Maildir (``postroom-uidvalidity``,
  under flock) and at least the current time, as Dovecot does. So a lost
  index, a deleted and re-created folder, or a rebuilt user directory
  all get a new value, and clients drop their caches.

A lost or unreadable index is moved aside and rebuilt from the Maildir:
the messages keep their files and flags but get new UIDs under a new
UIDVALIDITY. Only a corrupt one, though: an index SQLite cannot open
for the moment (locked, out of file descriptors, disk full) raises
``MailboxError`` and stays as it is.

Durability: ``synchronous=FULL``. A UID a client has seen must not be
given to another message after a power loss, and the index is written
only when something changed, so the fsync per change is affordable.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from postroom import logs
from postroom.errors import MailboxError
from postroom.mailbox import maildir

log = logging.getLogger(__name__)

INDEX_NAME = "postroom-index.sqlite"
UIDVALIDITY_FILE = "postroom-uidvalidity"
DOVECOT_KEYWORDS = "dovecot-keywords"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    uid INTEGER PRIMARY KEY,
    base TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    internaldate REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS keywords (
    number INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
"""


@dataclass(slots=True)
class Row:
    """One message as the index holds it; ``name`` is relative to the
    folder (``cur/<base>:2,S``)."""

    uid: int
    base: str
    name: str
    size: int
    internaldate: float


class Index:
    """The index of the folder at *path*; opening it creates or
    rebuilds the database if needed. *maildir* is the user's root
    Maildir, which holds the UIDVALIDITY counter.

    One Index (one SQLite connection) must not be used by two threads
    at once; it may move between threads (asyncio.to_thread)."""

    def __init__(self, path: Path, maildir: Path, *, fsync: bool = True) -> None:
        self.path = path
        self.user_maildir = maildir
        self.fsync = fsync
        self.db = self._connect()
        self.uidvalidity = self._meta("uidvalidity")
        #: uids whose files this object moved from new/ to cur/ since
        #: the owner last took them: the session that saw them first
        #: (RFC 3501 \Recent).
        self.claimed: list[int] = []
        self.synced_uidnext = 1
        # The database file we opened; see ``replaced``.
        self._inode = self._file_inode()

    def close(self) -> None:
        self.db.close()

    # -- reading ------------------------------------------------------------

    def replaced(self) -> bool:
        """True when the database file is no longer the one this object
        opened (deleted, rebuilt by another process): its UIDs are then
        not those other sessions see, and the folder must be reopened."""
        return self._file_inode() != self._inode

    def _file_inode(self) -> int | None:
        try:
            return os.stat(self.path / INDEX_NAME).st_ino
        except FileNotFoundError:
            return None

    def data_version(self) -> int:
        """Changes whenever another connection commits (SQLite's own
        counter): one cheap query tells a poller whether to look again."""
        value: int = self.db.execute("PRAGMA data_version").fetchone()[0]
        return value

    def uidnext(self) -> int:
        return self._meta("uidnext")

    def rows(self) -> dict[int, Row]:
        cursor = self.db.execute(
            "SELECT uid, base, name, size, internaldate FROM messages ORDER BY uid"
        )
        return {r[0]: Row(*r) for r in cursor}

    def row(self, uid: int) -> Row | None:
        r = self.db.execute(
            "SELECT uid, base, name, size, internaldate FROM messages WHERE uid = ?",
            (uid,),
        ).fetchone()
        return None if r is None else Row(*r)

    def keywords(self) -> dict[int, str]:
        return dict(self.db.execute("SELECT number, name FROM keywords"))

    # -- writing ------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """The cross-process write lock: BEGIN IMMEDIATE ... COMMIT."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def sync(self) -> dict[int, Row]:
        """Make the index agree with the directory; return every row.

        Looks first without the lock: when the listing matches the rows,
        as it does on almost every poll, nothing is written.

        Also sets ``synced_uidnext``: a UIDNEXT consistent with the rows
        returned (every UID below it is among them or expunged), which
        the stored UIDNEXT read a moment later may not be.
        """
        uidnext = self.uidnext()  # before the rows: see above
        rows = self.rows()
        listing = self._scan()
        if not _agree(rows, listing):
            with self.transaction():
                self.sync_locked()
                uidnext = self.uidnext()
                rows = self.rows()
        self.synced_uidnext = max(uidnext, max(rows, default=0) + 1)
        return rows

    def sync_locked(self) -> None:
        """``sync`` for a caller that holds the transaction already."""
        # List again, since another process may have synced while we
        # waited for the lock.
        rows = self.rows()
        listing = self._scan()
        missing: list[Row] = []
        for row in rows.values():
            name = listing.pop(row.base, None)
            if name is None:
                missing.append(row)
            elif name != row.name:
                self._rename_row(row.uid, name)
        if missing:
            # A file renamed by another program while we listed may be
            # in neither listing; look again before calling it gone.
            again = self._scan()
            for row in missing:
                name = again.get(row.base)
                if name is None:
                    self.db.execute("DELETE FROM messages WHERE uid = ?", (row.uid,))
                elif name != row.name:
                    self._rename_row(row.uid, name)
        if listing:
            self._number(listing)

    def _number(self, listing: dict[str, str]) -> None:
        # Arrival order: mtime, then the name (which starts with the
        # delivery time). A file that vanished meanwhile is skipped.
        found: list[tuple[int, str, str, os.stat_result]] = []
        for base, name in listing.items():
            try:
                st = os.stat(self.path / name)
            except FileNotFoundError:
                continue
            found.append((st.st_mtime_ns, base, name, st))
        found.sort(key=lambda item: (item[0], item[1]))
        uid = self.uidnext()
        moved = False
        for _mtime, base, name, st in found:
            if name.startswith("new/"):
                # Maildir readers move what they have seen to cur/.
                target = f"cur/{base}{maildir.INFO_SEPARATOR}"
                try:
                    os.rename(self.path / name, self.path / target)
                except FileNotFoundError:
                    continue
                name, moved = target, True
                self.claimed.append(uid)
            size = maildir.size_from_name(base)
            self.db.execute(
                "INSERT INTO messages VALUES (?, ?, ?, ?, ?)",
                (uid, base, name, st.st_size if size is None else size, st.st_mtime),
            )
            uid += 1
        self.set_uidnext(uid)
        if moved and self.fsync:
            maildir.fsync_dir(self.path / "cur")

    def insert(self, base: str, name: str, size: int, internaldate: float) -> int:
        """Number a file this process just placed (inside a transaction)."""
        uid = self.uidnext()
        self.db.execute(
            "INSERT INTO messages VALUES (?, ?, ?, ?, ?)",
            (uid, base, name, size, internaldate),
        )
        self.set_uidnext(uid + 1)
        return uid

    def set_uidnext(self, uid: int) -> None:
        self.db.execute("UPDATE meta SET value = ? WHERE key = 'uidnext'", (uid,))

    def _rename_row(self, uid: int, name: str) -> None:
        self.db.execute("UPDATE messages SET name = ? WHERE uid = ?", (name, uid))

    def rename_row(self, uid: int, name: str) -> None:
        self._rename_row(uid, name)

    def delete_row(self, uid: int) -> None:
        self.db.execute("DELETE FROM messages WHERE uid = ?", (uid,))

    def keyword_numbers(self, names: set[str]) -> dict[str, int]:
        """Numbers for *names*, adding the missing ones (in a transaction).
        Raises ValueError when the folder would need more than 26."""
        known = {name: n for n, name in self.keywords().items()}
        missing = sorted(names - known.keys())
        for name in missing:
            free = sorted(set(range(maildir.MAX_KEYWORDS)) - set(known.values()))
            if not free:
                raise ValueError("too many keywords in this mailbox")
            self.db.execute("INSERT INTO keywords VALUES (?, ?)", (free[0], name))
            known[name] = free[0]
        if missing:
            self._write_dovecot_keywords(known)
        return known

    def _write_dovecot_keywords(self, known: dict[str, int]) -> None:
        # The same numbering in Dovecot's own file, so that Dovecot (and
        # tools that follow it) name the letters as we do. Written while
        # we hold the index's lock; replaced whole.
        lines = "".join(
            f"{n} {name}\n" for name, n in sorted(known.items(), key=lambda i: i[1])
        )
        tmp = self.path / f".{DOVECOT_KEYWORDS}.{os.getpid()}.tmp"
        tmp.write_text(lines, encoding="utf-8")
        os.replace(tmp, self.path / DOVECOT_KEYWORDS)

    # -- internals -----------------------------------------------------------

    def _scan(self) -> dict[str, str]:
        """base -> name (relative) for every file in new/ and cur/."""
        listing: dict[str, str] = {}
        for sub in ("new", "cur"):
            with os.scandir(self.path / sub) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    base, _info = maildir.split_name(entry.name)
                    # cur/ wins over new/ for a file caught mid-move.
                    listing[base] = f"{sub}/{entry.name}"
        return listing

    def _meta(self, key: str) -> int:
        value: int = self.db.execute(
            "SELECT value FROM meta WHERE key = ?", (key,)
        ).fetchone()[0]
        return value

    def _connect(self) -> sqlite3.Connection:
        file = self.path / INDEX_NAME
        try:
            return self._open(file)
        except sqlite3.OperationalError as e:
            # Locked past the timeout, too many open files, a full
            # disk: the index is fine, only out of reach now. Rebuilding
            # it would give every client a new UIDVALIDITY (a full
            # download) and end every open session.
            raise MailboxError(f"mailbox index unavailable: {e}") from e
        except sqlite3.DatabaseError as e:
            # Unreadable: keep it for a post-mortem, rebuild from the
            # Maildir under a new UIDVALIDITY.
            aside = file.with_name(f"{INDEX_NAME}.broken-{int(time.time())}")
            log.error(logs.event("removed", index=file, error=e, moved_to=aside.name))
            os.replace(file, aside)
            for suffix in ("-wal", "-shm", "-journal"):
                maildir.unlink_quietly(Path(f"{file}{suffix}"))
            return self._open(file)

    def _open(self, file: Path) -> sqlite3.Connection:
        db = sqlite3.connect(
            file, timeout=30, isolation_level=None, check_same_thread=False
        )
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if self.fsync else 'OFF'}")
            if db.execute("SELECT value FROM meta WHERE key='uidvalidity'").fetchone():
                return db
        except sqlite3.OperationalError as e:
            if "no such table" not in str(e):
                db.close()
                raise
        except BaseException:
            db.close()
            raise

        # A new (or lost) index: make the tables and take a UIDVALIDITY.
        # Two processes may get here at once; the transaction decides,
        # and the loser's UIDVALIDITY value is simply never used.
        try:
            db.execute("BEGIN IMMEDIATE")
            for statement in filter(str.strip, _SCHEMA.split(";")):
                db.execute(statement)
            if db.execute("SELECT 1 FROM meta WHERE key='uidvalidity'").fetchone():
                db.execute("COMMIT")
                return db
            uidvalidity = next_uidvalidity(self.user_maildir)
            db.execute("INSERT INTO meta VALUES ('uidvalidity', ?)", (uidvalidity,))
            db.execute("INSERT INTO meta VALUES ('uidnext', 1)")
            db.execute("COMMIT")
        except BaseException:
            db.close()
            raise
        log.debug("created index=%s uidvalidity=%d", file, uidvalidity)
        return db


def next_uidvalidity(user_maildir: Path) -> int:
    """A UIDVALIDITY never given out in this Maildir before: at least
    the current time, and above the last value handed out."""
    path = user_maildir / UIDVALIDITY_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, maildir.FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        last = int(text) if text.isascii() and text.isdigit() else 0
        # 32 bits (RFC 3501 §9, nz-number): time fits until 2106.
        value = max(int(time.time()), last + 1) & 0xFFFFFFFF or 1
        data = f"{value}\n".encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)
        return value
    finally:
        os.close(fd)


def _agree(rows: dict[int, Row], listing: dict[str, str]) -> bool:
    if len(rows) != len(listing):
        return False
    return all(listing.get(row.base) == row.name for row in rows.values())
