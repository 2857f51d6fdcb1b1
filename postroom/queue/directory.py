"""A spool's directory as its owner holds it: lock, syncs, garbage.

Theory of operation
-------------------

One process owns a spool at a time: the one that holds the flock on
its ``spool.lock`` (which also records the owner's pid, for the error
another process gets). Everything here is for that owner; readers
(``journal.read_record``, the queue CLI) need none of it.

``SpoolDirectory`` bundles what the spool's lifecycle and its recovery
scan share: the paths, the lock, the journal directory's descriptor
(fsync'd whenever a segment name appears or goes), the count of fsyncs
done, and the *maintenance* database connection. That connection is
used by one thread at a time: the recovery scan's, then the spool's
sync thread, which runs garbage collection and WAL checkpoints between
two batches (see ``pipeline.py``); the batch inserts have a connection of
their own on the event loop's thread.

Garbage collection unlinks every segment, other than the active one,
whose messages are all removed, then deletes their rows. The files go
first: a removed row whose file still exists keeps a recovery scan from
resurrecting its record, while a file without rows would come back as
queued messages.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import sqlalchemy as sa

from postroom import logs
from postroom.errors import SpoolError
from postroom.queue import journal
from postroom.store import queue as tables

log = logging.getLogger(__name__)

_SQLITE_BUSY = 5


def is_busy(error: BaseException) -> bool:
    """Whether *error* (raw or wrapped by SQLAlchemy) is SQLITE_BUSY:
    another connection holds the lock we need. Not a fault: try again
    later."""
    code = getattr(getattr(error, "orig", error), "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF == _SQLITE_BUSY


class Connection:
    """One long-lived database connection, opened at first use.

    Every use goes through ``transaction()``, so that no transaction
    stays open between uses (SQLAlchemy begins one at the first
    statement otherwise, and an open read keeps SQLite from
    checkpointing its WAL). A connection whose transaction failed is
    dropped and replaced at the next use, in case the failure broke it
    (the server went away) rather than only the statement.

    *pragmas* run on every new connection. A connection with pragmas is
    discarded when it is dropped rather than going back to the engine's
    pool, where someone else would get our settings.
    """

    def __init__(self, engine: sa.Engine, *, pragmas: Sequence[str] = ()) -> None:
        self._engine = engine
        self._pragmas = tuple(pragmas)
        self._conn: sa.Connection | None = None

    def open(self) -> None:
        """Connect now rather than at first use."""
        if self._conn is None:
            self._conn = self._connect()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        conn = self._conn
        if conn is None:
            conn = self._conn = self._connect()
        try:
            with conn.begin():
                yield conn
        except BaseException as e:
            # Rolled back. Drop the connection, which may be what failed,
            # unless it only found the database locked.
            if not is_busy(e):
                self.close()
            raise

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(Exception):
            if self._pragmas:
                conn.invalidate()
            conn.close()

    def _connect(self) -> sa.Connection:
        conn = self._engine.connect()
        try:
            for pragma in self._pragmas:
                conn.exec_driver_sql(pragma)
            conn.commit()
        except BaseException:
            conn.invalidate()
            conn.close()
            raise
        return conn


class SpoolDirectory:
    """The directory of spool *name* under *spool_dir*, for its owner.

    Nothing is touched until ``lock()``; ``release()`` gives everything
    back. Raises ValueError for a bad *name* (``journal.check_name``).
    With *fsync* false, nothing is ever fsync'd (tests, benchmarks).
    """

    def __init__(
        self, spool_dir: Path, engine: sa.Engine, name: str, *, fsync: bool
    ) -> None:
        self.name = journal.check_name(name)
        self.spool_dir = Path(spool_dir)
        self.path = self.spool_dir / name
        self.journal_dir = self.path / "journal"
        self.fsync = fsync
        self.fsync_count = 0
        self.db = Connection(engine)
        # The journal directory, open for fsync once locked.
        self.dir_fd: int | None = None
        self._lock_fd: int | None = None

    def lock(self) -> str | None:
        """Take the spool's lock, creating its directories if need be.

        Returns None, or the pid (as text) of the process that holds the
        lock already. Raises SpoolError if the directories cannot be
        made or opened.
        """
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            if not self.journal_dir.exists():
                self.journal_dir.mkdir()
                # Both new names durable before any segment is.
                self.sync_dir(self.path)
                self.sync_dir(self.spool_dir)
            fd = os.open(
                self.path / "spool.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644
            )
        except OSError as e:
            raise SpoolError(
                f"cannot prepare spool {self.path}: {e.strerror}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            return owner or "unknown"
        self._lock_fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            self.dir_fd = os.open(self.journal_dir, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as e:
            raise SpoolError(
                f"cannot open spool journal {self.journal_dir}: {e.strerror}"
            ) from None
        return None

    def release(self) -> None:
        """Close the connections and the directory; let the lock go."""
        self.db.close()
        for name in ("dir_fd", "_lock_fd"):
            fd = getattr(self, name)
            if fd is not None:
                # Closing the lock file releases the flock.
                os.close(fd)
                setattr(self, name, None)

    def segments(self) -> list[int]:
        """The numbers of the segment files on disk, ascending."""
        return journal.segment_numbers(self.journal_dir)

    def sync_dir(self, path: Path) -> None:
        """fsync the directory *path* (with fsync on)."""
        if not self.fsync:
            return
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
            self.fsync_count += 1
        finally:
            os.close(fd)

    def checkpoint(self) -> int:
        """Checkpoint SQLite's WAL; return how many pages it holds.

        PASSIVE: it copies what it can without waiting for anyone, so it
        never holds up another process. The WAL is only started over by
        the first writer after a checkpoint that copied all of it, while
        no one else reads it; with other processes writing all the time
        (the other workers' spools) that can take many tries, and the
        caller tries again after each batch until the WAL is small.

        Blocking: the spool runs it on its sync thread.
        """
        with self.db.transaction() as conn:
            row = conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").one()
        _busy, wal_pages, _copied = row
        return int(wal_pages)

    def collect_garbage(self, active: int | None) -> int:
        """Unlink the segments, other than *active*, whose messages are
        all removed, then delete their rows; return how many went.

        Blocking (queries, unlinks, a directory fsync): the spool runs
        it on its sync thread, between batches.
        """
        messages = tables.messages
        candidates = [n for n in self.segments() if n != active]
        doomed = []
        # One indexed probe per segment file (there are few), rather than
        # a DISTINCT over the whole table.
        with self.db.transaction() as conn:
            for number in candidates:
                live = conn.execute(
                    sa.select(
                        sa.exists().where(
                            messages.c.spool == self.name,
                            messages.c.segment == number,
                            messages.c.state != tables.REMOVED,
                        )
                    )
                ).scalar()
                if not live:
                    doomed.append(number)
        if not doomed:
            return 0

        # Files first (see the module docstring).
        for number in doomed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.journal_dir / journal.segment_name(number))
        self.sync_dir(self.journal_dir)
        with self.db.transaction() as conn:
            counts = tables.delete_segments(conn, self.name, doomed)
        for number in doomed:
            log.info(
                logs.event(
                    "removed",
                    spool=self.name,
                    segment=journal.segment_name(number),
                    messages=counts.get(number, 0),
                )
            )
        return len(doomed)
