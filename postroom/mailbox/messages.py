"""One open folder: its messages, their flags, and changes by others.

Theory of operation
-------------------

A ``Mailbox`` is one session's view of one folder (what IMAP calls the
selected mailbox). Its view, the messages it has reported, changes only
in ``refresh`` and in the object's own ``store_flags`` and ``expunge``;
so message sequence numbers (index + 1 in ``messages()``) stay put
between refreshes, as RFC 3501 §2.3.1.2 needs, whatever other processes
do meanwhile.

``refresh`` syncs the index with the directory (``index.Index.sync``)
and reports the difference from the view: new messages (in UID order),
expunged UIDs, and messages whose flags changed. It is cheap when
nothing changed: one stat of new/ and cur/ and one ``PRAGMA
data_version`` are compared with what the last refresh saw. A
directory mtime has the granularity of the kernel's clock tick, so two
changes within one tick can leave it unchanged: a stamp younger than
two seconds is therefore not trusted and the next refresh looks again.

``append`` and ``copy`` number the new messages at once (for UIDPLUS,
RFC 4315) but do not add them to any view: the next ``refresh`` of the
target reports them, as a selected IMAP mailbox must (EXISTS).
``store_flags`` and ``expunge`` change this object's view at once and
are not reported again by its next refresh; other objects on the same
folder see them in their next refresh.

Methods block on the file system; callers in asyncio run them through
``asyncio.to_thread``. One object must not be used by two threads at
once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from postroom.errors import MailboxError, NoSuchMailbox, UidValidityChanged
from postroom.mailbox import maildir
from postroom.mailbox.index import Index, Row

# A stamp younger than this may hide a change made within the same
# clock tick; see the module docstring.
_STAMP_TRUST_NS = 2_000_000_000


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """A message as IMAP sees it. ``flags`` holds the IMAP names
    (``\\Seen`` ``\\Answered`` ``\\Flagged`` ``\\Deleted`` ``\\Draft``) and
    keywords as given; ``\\Recent`` is not a stored flag (see
    ``Mailbox.recent``). ``internaldate`` is seconds since the epoch."""

    uid: int
    size: int
    flags: frozenset[str]
    internaldate: float


@dataclass(slots=True)
class Changes:
    """What ``refresh`` found since this object's previous refresh."""

    new: list[MessageInfo] = field(default_factory=list)
    expunged: list[int] = field(default_factory=list)
    flags: list[MessageInfo] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.new or self.expunged or self.flags)


# Called with the bytes about to be added; raises QuotaExceeded.
QuotaCheck = Callable[[int], None]


class Mailbox:
    """An open folder; made by ``MailStore.open``. The first
    ``refresh`` happens on opening, so ``messages()`` is ready."""

    def __init__(
        self,
        name: str,
        path: Path,
        user_maildir: Path,
        *,
        fsync: bool = True,
        check_quota: QuotaCheck | None = None,
    ) -> None:
        if not maildir.is_maildir(path):
            raise NoSuchMailbox(f"no such mailbox: {name}")
        self.name = name
        self.directory = path
        self.fsync = fsync
        self._check_quota = check_quota
        self._index = Index(path, user_maildir, fsync=fsync)
        self.uidvalidity = self._index.uidvalidity
        self._view: dict[int, Row] = {}
        self._keywords: dict[int, str] = {}
        self._stamp: tuple[int, int, int] | None = None
        # messages() as last built; None after any change to the view.
        self._infos: list[MessageInfo] | None = None
        #: UIDs this session is the first to see (RFC 3501 \Recent).
        self.recent: set[int] = set()
        # The first view is the whole folder: nothing to report as news,
        # so no MessageInfo is built for it (messages() builds them).
        self._refresh(report=False)

    def close(self) -> None:
        self._index.close()

    def __enter__(self) -> Mailbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def uidnext(self) -> int:
        """UIDNEXT as of the last refresh, consistent with the view: a
        message another process added since has a UID at or above it
        (RFC 3501 §2.3.1.1), so a client never skips it."""
        return self._index.synced_uidnext

    # -- reading ------------------------------------------------------------

    def refresh(self) -> Changes:
        """Pick up changes made by anyone since this object's last refresh."""
        return self._refresh(report=True)

    def _refresh(self, *, report: bool) -> Changes:
        stamp = self._read_stamp()
        if stamp is not None and stamp == self._stamp:
            return Changes()
        rows = self._index.sync()
        self._keywords = self._index.keywords()
        self.recent.update(self._index.claimed)
        self._index.claimed = []

        changes = Changes()
        self._infos = None
        for uid in [u for u in self._view if u not in rows]:
            changes.expunged.append(uid)
            del self._view[uid]
            self.recent.discard(uid)
        for uid, row in rows.items():
            old = self._view.get(uid)
            if old is None:
                if report:
                    changes.new.append(self._info(row))
            elif old.name != row.name:
                changes.flags.append(self._info(row))
            self._view[uid] = row
        # Rows come in UID order and new UIDs are higher than any in the
        # view, so the dict stays in UID order without sorting.
        self._stamp = self._trusted(stamp, self._read_stamp())
        return changes

    def messages(self) -> list[MessageInfo]:
        """Every message of the view, in UID order (sequence number =
        index + 1). The list is shared until the view changes: do not
        modify it."""
        if self._infos is None:
            self._infos = [self._info(row) for row in self._view.values()]
        return self._infos

    def info(self, uid: int) -> MessageInfo:
        return self._info(self._row(uid))

    def path(self, uid: int) -> Path:
        """The file of *uid*, for readers that stream it; it may be
        renamed by a flag change in another process (``read`` retries)."""
        return self.directory / self._row(uid).name

    def path_str(self, uid: int) -> str:
        """``path`` as a ``str``, for readers that open many files: a
        bulk IMAP FETCH pays ~5 us a message for a ``Path``, a few
        hundred ns for this (``str`` of the directory is cached)."""
        return f"{self.directory}/{self._row(uid).name}"

    def read(self, uid: int) -> bytes:
        """The stored bytes of *uid* (CRLF line ends as delivered).

        Raises KeyError for a UID not in the view and FileNotFoundError
        when another process expunged it meanwhile.
        """
        try:
            return self.path(uid).read_bytes()
        except FileNotFoundError:
            # Renamed by a flag change elsewhere: look it up again.
            self._reload_row(uid)
            return self.path(uid).read_bytes()

    def unseen(self) -> int:
        return sum("\\Seen" not in m.flags for m in self.messages())

    def first_unseen(self) -> int | None:
        """Sequence number of the first message without \\Seen, or None."""
        for seq, m in enumerate(self.messages(), 1):
            if "\\Seen" not in m.flags:
                return seq
        return None

    # -- changing -------------------------------------------------------------

    def store_flags(
        self,
        uids: Iterable[int],
        flags: Iterable[str],
        mode: Literal["set", "add", "remove"],
    ) -> list[MessageInfo]:
        """Set, add or remove *flags* on the messages *uids* of the view.

        Returns the new state of each of them still present (UIDs not in
        the view or expunged elsewhere are skipped). ``\\Recent`` and
        unknown ``\\`` flags are ignored. Raises MailboxError when a
        folder would need more than 26 keywords.
        """
        wanted = {f for f in flags if not f.startswith("\\")} | {
            f for f in flags if f in maildir.SYSTEM_FLAGS
        }
        targets = sorted(u for u in set(uids) if u in self._view)
        result: list[MessageInfo] = []
        self._infos = None
        with self._index.transaction():
            try:
                numbers = self._index.keyword_numbers(
                    {f for f in wanted if not f.startswith("\\")}
                )
            except ValueError as e:
                raise MailboxError(str(e)) from None
            self._keywords = {n: k for k, n in numbers.items()}
            for uid in targets:
                row = self._set_flags(uid, wanted, mode, numbers)
                if row is not None:
                    self._view[uid] = row
                    result.append(self._info(row))
        return result

    def expunge(self, uids: Iterable[int] | None = None) -> list[int]:
        """Remove messages; None means every message of the view that has
        \\Deleted now. Explicit *uids* are removed whatever their flags
        (POP3 DELE). Returns the UIDs removed from the view, ascending."""
        removed: list[int] = []
        self._infos = None
        with self._index.transaction():
            if uids is None:
                candidates = list(self._view)
            else:
                candidates = sorted(u for u in set(uids) if u in self._view)
            for uid in candidates:
                row = self._index.row(uid)
                if row is not None:
                    _base, info = maildir.split_name(row.name)
                    if uids is None and "T" not in (info or ""):
                        continue
                    self._unlink(row)
                    self._index.delete_row(uid)
                # Gone from the index either way: this caller sees it go.
                del self._view[uid]
                self.recent.discard(uid)
                removed.append(uid)
        return removed

    def append(
        self,
        data: bytes,
        flags: Iterable[str] = (),
        internaldate: float | None = None,
    ) -> int:
        """Store *data* as a new message; return its UID.

        Raises QuotaExceeded when the owner's quota would be passed.
        """
        if self._check_quota is not None:
            self._check_quota(len(data))
        tmp, base = maildir.write_tmp(self.directory, [data], fsync=self.fsync)
        when = time.time() if internaldate is None else internaldate
        try:
            os.utime(tmp, (when, when))
            [uid] = self._place([(tmp, base, frozenset(flags), when)])
        except BaseException:
            maildir.unlink_quietly(tmp)
            raise
        return uid

    def copy(self, uids: Iterable[int], target: Mailbox) -> list[tuple[int, int]]:
        """Copy messages of the view into *target*, flags and internal
        date kept; returns (source uid, new uid) pairs for COPYUID
        (RFC 4315 §3). Files are hard-linked where possible."""
        chosen = sorted(u for u in set(uids) if u in self._view)
        if target._check_quota is not None:
            target._check_quota(sum(self._view[u].size for u in chosen))
        staged: list[tuple[Path, str, frozenset[str], float]] = []
        pairs_src: list[int] = []
        try:
            for uid in chosen:
                try:
                    row = self._view[uid]
                    staged.append(target._stage_copy(row, self))
                except FileNotFoundError:
                    # Renamed by a flag change elsewhere, or expunged
                    # (then _reload_row raises again and COPY fails).
                    self._reload_row(uid)
                    staged.append(target._stage_copy(self._view[uid], self))
                pairs_src.append(uid)
            new = target._place(staged)
        except BaseException:
            for tmp, *_rest in staged:
                maildir.unlink_quietly(tmp)
            raise
        return list(zip(pairs_src, new, strict=True))

    # -- internals ------------------------------------------------------------

    def _place(
        self, staged: list[tuple[Path, str, frozenset[str], float]]
    ) -> list[int]:
        # Number and rename in one transaction, so no other process can
        # number these files first.
        uids: list[int] = []
        if not staged:
            return uids
        with self._index.transaction():
            keywords = {f for _t, _b, flags, _d in staged for f in flags}
            try:
                numbers = self._index.keyword_numbers(
                    {f for f in keywords if not f.startswith("\\")}
                )
            except ValueError as e:
                raise MailboxError(str(e)) from None
            placed: list[Path] = []
            try:
                for tmp, base, flags, when in staged:
                    info = maildir.info_for(flags, None, numbers)
                    name = f"cur/{base}{maildir.INFO_SEPARATOR}{info}"
                    os.rename(tmp, self.directory / name)
                    placed.append(self.directory / name)
                    size = maildir.size_from_name(base) or 0
                    uids.append(self._index.insert(base, name, size, when))
            except BaseException:
                # The rows roll back; the files must go too, or the next
                # sync would number messages the caller was told failed.
                for path in placed:
                    maildir.unlink_quietly(path)
                raise
        if self.fsync:
            maildir.fsync_dir(self.directory / "cur")
        return uids

    def _stage_copy(
        self, row: Row, origin: Mailbox
    ) -> tuple[Path, str, frozenset[str], float]:
        source = origin.directory / row.name
        flags = origin._info(row).flags
        base = f"{maildir.unique_name()},S={row.size}"
        tmp = self.directory / "tmp" / base
        try:
            os.link(source, tmp)
        except OSError:
            # Another file system, or links not allowed: copy the bytes.
            data = source.read_bytes()
            tmp, base = maildir.write_tmp(self.directory, [data], fsync=self.fsync)
            os.utime(tmp, (row.internaldate, row.internaldate))
        return tmp, base, flags, row.internaldate

    def _set_flags(
        self,
        uid: int,
        wanted: set[str],
        mode: Literal["set", "add", "remove"],
        numbers: dict[str, int],
    ) -> Row | None:
        # Inside a transaction. A file renamed by a program that does
        # not use our index (mutt) since our last sync is found by a
        # sync within the lock, and its flags are the ones we change.
        for attempt in range(2):
            row = self._index.row(uid)
            if row is None:
                return None
            base, info = maildir.split_name(row.name.partition("/")[2])
            old = maildir.flags_from_info(info, self._keywords)
            new_info = maildir.info_for(_apply(old, wanted, mode), info, numbers)
            if new_info == info and row.name.startswith("cur/"):
                return row
            name = f"cur/{base}{maildir.INFO_SEPARATOR}{new_info}"
            try:
                os.rename(self.directory / row.name, self.directory / name)
            except FileNotFoundError:
                if attempt == 0:
                    self._index.sync_locked()
                continue
            self._index.rename_row(uid, name)
            row.name = name
            return row
        return None

    def _unlink(self, row: Row) -> None:
        # Inside a transaction. A file renamed by a program that does
        # not use our index (mutt setting a flag) since our last sync
        # would survive the unlink and come back under a new UID at the
        # next sync: a POP3 DELE undone. A sync within the lock finds
        # its current name.
        try:
            os.unlink(self.directory / row.name)
            return
        except FileNotFoundError:
            pass
        except OSError:
            # XXX: a file we may not remove stays, and comes back under
            # a new UID, as before; failing the whole EXPUNGE or QUIT
            # over one file would leave every other one in place too.
            return
        self._index.sync_locked()
        current = self._index.row(row.uid)
        if current is not None:
            maildir.unlink_quietly(self.directory / current.name)

    def _reload_row(self, uid: int) -> None:
        row = self._index.row(uid)
        if row is None:
            with self._index.transaction():
                self._index.sync_locked()
            row = self._index.row(uid)
        if row is None:
            raise FileNotFoundError(f"message {uid} was expunged")
        self._view[uid] = row
        self._infos = None

    def _row(self, uid: int) -> Row:
        return self._view[uid]

    def _info(self, row: Row) -> MessageInfo:
        _base, info = maildir.split_name(row.name)
        flags = maildir.flags_from_info(info, self._keywords)
        return MessageInfo(row.uid, row.size, flags, row.internaldate)

    def _read_stamp(self) -> tuple[int, int, int] | None:
        try:
            new = os.stat(self.directory / "new").st_mtime_ns
            cur = os.stat(self.directory / "cur").st_mtime_ns
        except FileNotFoundError:
            raise NoSuchMailbox(f"mailbox was deleted: {self.name}") from None
        if self._index.replaced():
            # RFC 3501 §2.3.1.1: a session must not see UIDs change under
            # it; the IMAP server answers this with BYE or a re-SELECT.
            raise UidValidityChanged(
                f"mailbox index was rebuilt, UIDs changed: {self.name}"
            )
        return new, cur, self._index.data_version()

    @staticmethod
    def _trusted(
        before: tuple[int, int, int] | None, after: tuple[int, int, int] | None
    ) -> tuple[int, int, int] | None:
        # Keep the stamp read before the sync, and only if the directories
        # did not move during it and are old enough to be trusted. A
        # commit by another process during the sync changes the data
        # version after *before* was read, so the next refresh looks
        # again rather than miss it.
        if before is None or after is None or before[:2] != after[:2]:
            return None
        if time.time_ns() - max(before[0], before[1]) < _STAMP_TRUST_NS:
            return None
        return before


def _apply(
    old: frozenset[str], flags: set[str], mode: Literal["set", "add", "remove"]
) -> frozenset[str]:
    if mode == "set":
        return frozenset(flags)
    if mode == "add":
        return old | flags
    return old - flags
