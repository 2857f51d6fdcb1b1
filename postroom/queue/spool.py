"""The spool: makes accepted messages durable before the 250 reply.

Theory of operation
-------------------

Layout. A spool has a name (``main`` unless told otherwise) and lives
in ``<spool_dir>/<name>/``. Its ``spool.lock`` is held (flock) by the
one process that owns the spool; its ``journal/`` holds append-only
segment files ``00000001.seg``, ``00000002.seg``, ... Each accepted
message is one record in one segment::

    offset  size  field
         0     4  magic b"PRj1" (the last byte is the format version)
         4     4  envelope length E  (big-endian unsigned)
         8     4  content length C
        12     4  crc32 of envelope + content
        16     4  crc32 of bytes 0..15 (so lengths are trusted before use)
        20     E  Envelope.to_json()
      20+E     C  message content, as received

The queue rows (``store/queue.py``) point at records by spool name,
segment number, offset and length.

Several spools. Each SMTP worker process owns a spool of its own (its
own writer thread, lock and journal) and all of them share one
database; in cluster mode several nodes will share it too. Segment
numbers are per spool, so everything a spool asks the database about
its own rows (recovery, garbage collection) is filtered by its name: a
spool never reads another's rows as its own, never deletes them, and
only ever unlinks files in its own directory. Names must therefore be
unique among all spools on one database, not only on one host.
``recover_all()`` lets the server's parent process recover the spools
that no worker will open, for example after the number of workers went
down.

Group commit. ``commit()`` runs on the event loop: it serializes the
envelope, queues the work for the writer thread and awaits a future.
The writer thread takes *every* pending commit at once, writes them all
with one pwritev, makes them durable with one fdatasync, inserts their
rows in one SQLite transaction, then resolves the futures through
``call_soon_threadsafe``. While it waits on the disk, new commits pile
up and go in the next batch, so the fsync rate stays near the disk's
rate however many sessions commit, and each fsync carries many messages.

Invariants.

- A future resolves successfully only after its record is fsync'd and
  its rows are committed: the SMTP server may answer 250.
- Only the writer thread writes, truncates, creates or unlinks segment
  files once the spool is started; there is no other lock around them.
- Only the last batch written can be incomplete on disk, because each
  batch is fsync'd before the next is written; a torn record can
  therefore only be at the tail of the active segment, and none of its
  messages was answered 250.
- A record without a row is either the victim of a power loss (SQLite
  runs ``synchronous=NORMAL``, so its last transactions may be lost
  while the fsync'd journal is not) or garbage that recovery ignores.
  When a batch fails after its write, its bytes are truncated away so
  that a message answered 451 does not come back at the next start.
- A row stays, in state ``removed``, until its segment is unlinked, so
  recovery never mistakes a removed message for one whose row was lost.

Recovery (``start()``) scans every segment before the writer starts:
it cuts a torn tail off, re-creates missing rows, drops live rows whose
segment file has gone, holds messages whose record cannot be read, and
collects garbage. Garbage collection unlinks every segment, other than
the active one, whose messages are all removed; it runs at start, after
each rotation, and when ``collect_garbage()`` is called (the server
calls it after it removes messages).

Database connection. The spool keeps one connection for its life
(opened by recovery, used by the writer thread, closed by ``close()``)
rather than checking one out of the pool for every batch; a failed
batch rolls back, and a connection that failed is replaced at the next
use, in case the failure broke it.

Who may call what: ``start``, ``commit``, ``submit``,
``collect_garbage`` and ``close`` from one event loop (``commit`` from
any number of tasks); ``read_content``, ``read_message`` and
``read_record`` from any thread or process, also while another process
owns the spool; ``recover_all`` while no process owns the spools it is
to recover (it skips those that are owned).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import mmap
import os
import re
import struct
import threading
import zlib
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from postroom import logs
from postroom.errors import NotFound, SpoolCorrupt, SpoolError
from postroom.queue.envelope import Envelope
from postroom.store import queue as tables

log = logging.getLogger(__name__)

MAGIC = b"PRj1"
_HEADER = struct.Struct(">4sIIII")
HEADER_SIZE = _HEADER.size
_MAX_PART = 0xFFFFFFFF
_SEGMENT_NAME = re.compile(r"^(\d{8})\.seg$")
# A spool's name is a directory name and a database value (String(32)):
# lower case so that no two names share a directory on a case-folding
# file system, no "." or "/" so that it can only name a child of
# spool_dir, and no leading "-" so that it never reads as an option.
_SPOOL_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
DEFAULT_NAME = "main"
_IOV_MAX = 1024
# Rows per IN (...) list: under SQLite's default limit of 999 variables.
_CHUNK = 500


# XXX: this module is twice the size we aim for and holds two concerns:
# the on-disk format (names, record encoding, reading, scanning) and the
# spool's life (lock, writer, recovery, collection). The format half
# belongs in a module of its own (queue/journal.py); it stays here until
# that split can be made as a change of its own, without moving code
# other changes are editing.


def segment_name(number: int) -> str:
    return f"{number:08d}.seg"


def check_name(name: str) -> str:
    """Return *name* if it can name a spool, else raise ValueError.

    A spool name is 1 to 32 characters from ``a-z``, ``0-9`` and ``-``,
    not starting with ``-``: ``main``, ``w0``, ``node2-w13``.
    """
    if not isinstance(name, str) or not _SPOOL_NAME.fullmatch(name):
        raise ValueError(
            f"bad spool name {name!r}: use 1 to 32 of a-z, 0-9 and '-',"
            " not starting with '-'"
        )
    return name


def segment_path(spool_dir: Path, spool: str, segment: int) -> Path:
    """Where segment *segment* of spool *spool* under *spool_dir* lives."""
    return Path(spool_dir) / spool / "journal" / segment_name(segment)


def spool_names(spool_dir: Path) -> list[str]:
    """The names of the spools under *spool_dir*, sorted: each directory
    with a valid name and a ``journal/`` inside. Other entries are not
    spools and are left alone."""
    try:
        entries = list(os.scandir(spool_dir))
    except FileNotFoundError:
        return []
    return sorted(
        entry.name
        for entry in entries
        if _SPOOL_NAME.fullmatch(entry.name)
        and os.path.isdir(os.path.join(entry.path, "journal"))
    )


def encode_header(envelope: bytes, content: bytes) -> bytes:
    """The 20-byte record header for *envelope* and *content*."""
    crc = zlib.crc32(content, zlib.crc32(envelope))
    head = struct.pack(">4sIII", MAGIC, len(envelope), len(content), crc)
    return head + struct.pack(">I", zlib.crc32(head))


def decode_header(buf: bytes | memoryview) -> tuple[int, int, int] | None:
    """``(envelope length, content length, crc)``, or None when *buf*
    does not start with a valid header (wrong magic, bad header crc)."""
    if len(buf) < HEADER_SIZE:
        return None
    magic, env_len, content_len, crc, head_crc = _HEADER.unpack_from(buf)
    if magic != MAGIC or zlib.crc32(buf[: HEADER_SIZE - 4]) != head_crc:
        return None
    return env_len, content_len, crc


def read_record(
    spool_dir: Path, spool: str, segment: int, offset: int, length: int
) -> tuple[bytes, bytes]:
    """Read one record of spool *spool* back: ``(envelope JSON, content)``.

    Raises SpoolError if the segment file is missing or unreadable and
    SpoolCorrupt if the record is short or fails its checksums, or if
    *spool* (a database value) is not a spool name: it becomes part of
    a path, so it must not be able to point outside *spool_dir*.
    """
    if not _SPOOL_NAME.fullmatch(spool):
        raise SpoolCorrupt(f"queue row names a bad spool {spool!r}")
    where = f"{spool}/{segment_name(segment)}:{offset}"
    path = segment_path(spool_dir, spool, segment)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise SpoolError(f"cannot open segment {path}: {e.strerror}") from None
    try:
        raw = os.pread(fd, length, offset)
    except OSError as e:
        raise SpoolError(f"cannot read record {where}: {e.strerror}") from None
    finally:
        os.close(fd)

    header = decode_header(raw)
    if len(raw) < length or header is None:
        raise SpoolCorrupt(f"record {where} is truncated or has a bad header")
    env_len, content_len, crc = header
    if HEADER_SIZE + env_len + content_len != length:
        raise SpoolCorrupt(f"record {where} does not have the expected length")
    payload = memoryview(raw)[HEADER_SIZE:]
    if zlib.crc32(payload) != crc:
        raise SpoolCorrupt(f"record {where} fails its checksum")
    return bytes(payload[:env_len]), bytes(payload[env_len:])


@dataclass
class RecoveryReport:
    """What the recovery scan at ``Spool.start()`` (or ``recover_all``)
    found and did, in one spool."""

    segments: int = 0  # segment files scanned
    records: int = 0  # valid records in them
    reinserted: int = 0  # records whose lost queue rows were re-created
    truncated: int = 0  # segments whose torn tail was cut off
    truncated_bytes: int = 0
    corrupt: int = 0  # bad records skipped, plus messages held as unreadable
    dropped: int = 0  # live queue rows whose segment file was gone
    collected: int = 0  # fully removed segment files unlinked


@dataclass
class _Commit:
    """One ``commit()`` call waiting for the writer thread."""

    envelope: Envelope
    env_json: bytes
    content: bytes
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]
    offset: int = 0
    length: int = 0


@dataclass
class _Scan:
    """One segment's records as the recovery scan found them."""

    size: int
    end: int  # where the valid prefix ends; == size when the tail is clean
    records: set[tuple[int, int]] = field(default_factory=set)
    # Records with no row at their offset: (offset, length, envelope JSON).
    unknown: list[tuple[int, int, bytes]] = field(default_factory=list)
    corrupt: list[int] = field(default_factory=list)


class Spool:
    """One named spool: one process's journal and the queue rows that
    point into it; see the module docstring.

    *spool_dir* is the directory all spools of the node live under; this
    one uses ``<spool_dir>/<name>/``. Raises ValueError for a bad *name*
    (see ``check_name``).
    """

    def __init__(
        self,
        spool_dir: Path,
        engine: sa.Engine,
        *,
        name: str = DEFAULT_NAME,
        fsync: bool = True,
        segment_size: int = 64 << 20,
    ) -> None:
        self.name = check_name(name)
        self.spool_dir = Path(spool_dir)
        self.path = self.spool_dir / name
        self.journal_dir = self.path / "journal"
        self.fsync_count = 0
        self.commit_count = 0
        self._engine = engine
        self._fsync = fsync
        self._segment_size = segment_size

        self._lock_fd: int | None = None
        self._dir_fd: int | None = None
        # The spool's one database connection (see the module docstring).
        self._conn: sa.Connection | None = None
        self._fd: int | None = None  # the active segment, open for append
        self._active: int | None = None
        self._offset = 0
        self._next_segment = 1
        self._gc_due = False

        self._running = False
        self._thread: threading.Thread | None = None
        self._wakeup = threading.Condition()
        self._pending: list[_Commit] = []
        self._gc_waiters: list[
            tuple[asyncio.AbstractEventLoop, asyncio.Future[int]]
        ] = []
        self._stopping = False

    # -- Public API --------------------------------------------------------

    async def start(self) -> RecoveryReport:
        """Lock the spool, run the recovery scan, start the writer thread.

        Raises SpoolError if another process owns the spool or the spool
        directory cannot be prepared.
        """
        if self._running or self._stopping:
            raise SpoolError("a Spool starts once; make a new one to reopen")
        try:
            report = await asyncio.to_thread(self._open)
        except BaseException:
            self._release()
            raise
        self._thread = threading.Thread(
            target=self._run, name=f"postroom-spool-{self.name}", daemon=True
        )
        self._running = True
        self._thread.start()
        return report

    async def commit(self, envelope: Envelope, content: bytes) -> None:
        """Store *envelope* and *content*; return once both are durable
        and the message is in the queue tables.

        Raises SpoolError when the message could not be stored; the
        caller answers 451 and the client retries. If the calling task is
        cancelled, the message may still become queued.
        """
        await self.submit(envelope, content)

    def submit(self, envelope: Envelope, content: bytes) -> asyncio.Future[None]:
        """Hand a message to the writer; the future resolves as ``commit``
        returns. For callers on the hot path that would rather add a
        callback than spend a task per message (the SMTP session).
        Must be called from the event loop's thread."""
        if not self._running:
            raise SpoolError("spool is not running")
        if len(content) > _MAX_PART:
            raise SpoolError("message too large for the spool")
        env_json = envelope.to_json()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        item = _Commit(envelope, env_json, content, loop, future)
        with self._wakeup:
            if self._stopping:
                raise SpoolError("spool is closing")
            self._pending.append(item)
            self._wakeup.notify()
        return future

    async def collect_garbage(self) -> int:
        """Unlink segments whose messages are all removed; return how many.

        Runs on the writer thread, between batches.
        """
        if not self._running:
            raise SpoolError("spool is not running")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        with self._wakeup:
            if self._stopping:
                raise SpoolError("spool is closing")
            self._gc_waiters.append((loop, future))
            self._wakeup.notify()
        return await future

    def read_content(self, queue_id: str) -> bytes:
        """The content of queued message *queue_id*, checksum verified.

        Blocking (one pread): call it through ``asyncio.to_thread`` for
        large messages. Raises NotFound, SpoolError or SpoolCorrupt.
        """
        return read_message(self._engine, self.spool_dir, queue_id)[1]

    async def close(self) -> None:
        """Finish pending commits, stop the writer, close the database
        connection and release the lock."""
        if self._thread is not None:
            with self._wakeup:
                self._stopping = True
                self._wakeup.notify()
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        self._running = False
        self._release()

    # -- Opening and recovery (before the writer thread runs) --------------

    def _open(self) -> RecoveryReport:
        owner = self._lock()
        if owner is not None:
            raise SpoolError(
                f"spool {self.path} is in use by another process (pid {owner})"
            )
        self._dir_fd = os.open(self.journal_dir, os.O_RDONLY | os.O_DIRECTORY)
        return self._recover(reopen=True)

    def _recover_idle(self) -> RecoveryReport | None:
        """Recover and collect, for ``recover_all``: no segment becomes
        active, so the last one is collected too once it is all removed.
        None, having done nothing, if another process owns the spool."""
        try:
            owner = self._lock()
            if owner is not None:
                log.warning(
                    logs.event(
                        "recovered",
                        spool=self.name,
                        action="skip",
                        reason=f"in use by pid {owner}",
                    )
                )
                return None
            self._dir_fd = os.open(self.journal_dir, os.O_RDONLY | os.O_DIRECTORY)
            return self._recover(reopen=False)
        finally:
            self._release()

    def _lock(self) -> str | None:
        """Take the spool's lock; None, or the pid (as text) of the
        process that holds it already."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            if not self.journal_dir.exists():
                self.journal_dir.mkdir()
                # Both new names durable before any segment is.
                self._sync_dir(self.path)
                self._sync_dir(self.spool_dir)
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
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd
        return None

    def _recover(self, *, reopen: bool) -> RecoveryReport:
        # XXX: every start reads and checksums every record of every
        # segment, so it takes time in proportion to the spool (about
        # 2 s per GB from the page cache, measured). That is acceptable
        # while segments are collected as soon as their messages are
        # gone; a per-segment "sealed and verified" mark would bound it
        # to the active segment.
        report = RecoveryReport()
        on_disk = self._segments_on_disk()
        messages = tables.messages
        with self._transaction() as conn:
            in_db = set(
                conn.execute(
                    sa.select(messages.c.segment)
                    .distinct()
                    .where(messages.c.spool == self.name)
                ).scalars()
            )

        # Rows whose segment is gone: their content is lost for good.
        # XXX: "gone" is judged by this host's disk, so two spools of
        # the same name on one database (two nodes configured alike)
        # would drop each other's rows here. Nothing enforces unique
        # names across hosts, because the flock only spans one host; a
        # lease row per spool in the database would, and belongs with
        # cluster mode.
        for segment in sorted(in_db - set(on_disk)):
            report.dropped += self._drop_rows(segment)

        # Scan every segment; only the last one may become active again.
        appendable = False
        for segment in on_disk:
            appendable = self._recover_segment(segment, report)
        self._next_segment = max([*on_disk, *in_db], default=0) + 1
        if reopen and on_disk and appendable:
            last = on_disk[-1]
            size = (self.journal_dir / segment_name(last)).stat().st_size
            if size < self._segment_size:
                self._open_segment(last, size)

        report.collected = self._collect_garbage()
        log.info(
            logs.event(
                "recovered",
                spool=self.name,
                segments=report.segments,
                records=report.records,
                reinserted=report.reinserted,
                truncated=report.truncated,
                corrupt=report.corrupt,
                dropped=report.dropped,
                collected=report.collected,
            )
        )
        return report

    def _recover_segment(self, segment: int, report: RecoveryReport) -> bool:
        """Scan one segment, mend it and its rows; True if appendable."""
        messages = tables.messages
        name = segment_name(segment)
        path = self.journal_dir / name
        with self._transaction() as conn:
            rows = conn.execute(
                sa.select(
                    messages.c.queue_id,
                    messages.c.offset,
                    messages.c.length,
                    messages.c.state,
                ).where(messages.c.spool == self.name, messages.c.segment == segment)
            ).all()
        known = {(r.offset, r.length) for r in rows}
        scan = _scan_segment(path, {offset for offset, _ in known})
        report.segments += 1
        report.records += len(scan.records)
        for offset in scan.corrupt:
            report.corrupt += 1
            log.error(
                logs.event(
                    "recovered",
                    action="skip",
                    spool=self.name,
                    segment=name,
                    offset=offset,
                    reason="bad checksum",
                )
            )

        # Rows that point at no valid record: hold them for a human.
        for row in rows:
            if (row.offset, row.length) in scan.records:
                continue
            try:
                read_record(self.spool_dir, self.name, segment, row.offset, row.length)
            except SpoolError as e:
                if row.state != tables.REMOVED:
                    report.corrupt += 1
                    self._hold(row.queue_id, str(e))

        # Lost rows: the journal is the source of truth.
        report.reinserted += self._reinsert(segment, scan.unknown)

        # A torn tail was never answered 250; cut it off, unless a row
        # points into it, which would make it corruption, not a tear.
        if scan.end == scan.size:
            return True
        if any(offset >= scan.end for offset, _ in known):
            log.error(
                logs.event(
                    "recovered",
                    action="keep",
                    spool=self.name,
                    segment=name,
                    offset=scan.end,
                    reason="unreadable data before queued records",
                )
            )
            return False
        self._truncate(path, scan.end)
        report.truncated += 1
        report.truncated_bytes += scan.size - scan.end
        log.warning(
            logs.event(
                "recovered",
                action="truncate",
                spool=self.name,
                segment=name,
                offset=scan.end,
                discarded=scan.size - scan.end,
            )
        )
        return True

    def _reinsert(self, segment: int, unknown: Sequence[tuple[int, int, bytes]]) -> int:
        found: list[tuple[Envelope, bytes, int, int]] = []
        for offset, length, env_json in unknown:
            try:
                envelope = Envelope.from_json(env_json)
            except (ValueError, TypeError, KeyError) as e:
                log.error(
                    logs.event(
                        "recovered",
                        action="skip",
                        spool=self.name,
                        segment=segment_name(segment),
                        offset=offset,
                        reason=f"bad envelope: {e}",
                    )
                )
                continue
            found.append((envelope, env_json, offset, length))
        if not found:
            return 0

        taken = self._existing_ids([f[0].queue_id for f in found])
        rows: list[tuple[Envelope, bytes, int, int, int]] = []
        seen: set[str] = set()
        for envelope, env_json, offset, length in found:
            queue_id = envelope.queue_id
            if queue_id in taken or queue_id in seen:
                log.warning(
                    logs.event(
                        "recovered",
                        queue_id,
                        action="skip",
                        spool=self.name,
                        segment=segment_name(segment),
                        offset=offset,
                        reason="duplicate queue id",
                    )
                )
                continue
            seen.add(queue_id)
            size = length - HEADER_SIZE - len(env_json)
            rows.append((envelope, env_json, size, offset, length))
        with self._transaction() as conn:
            tables.insert_messages(conn, self.name, segment, rows)
        for envelope, _, size, offset, _ in rows:
            log.info(
                logs.event(
                    "recovered",
                    envelope.queue_id,
                    spool=self.name,
                    segment=segment_name(segment),
                    offset=offset,
                    size=size,
                    nrcpt=len(envelope.recipients),
                )
            )
        return len(rows)

    def _existing_ids(self, queue_ids: Sequence[str]) -> set[str]:
        # Deliberately not filtered by spool: queue_id is the key of the
        # whole table, so an id another spool's row holds cannot be
        # inserted here either, and trying would fail the whole start.
        # Only reading other spools' rows, this never changes them.
        column = tables.messages.c.queue_id
        taken: set[str] = set()
        with self._transaction() as conn:
            for i in range(0, len(queue_ids), _CHUNK):
                chunk = queue_ids[i : i + _CHUNK]
                taken.update(
                    conn.execute(sa.select(column).where(column.in_(chunk))).scalars()
                )
        return taken

    def _drop_rows(self, segment: int) -> int:
        messages = tables.messages
        with self._transaction() as conn:
            live = (
                conn.execute(
                    sa.select(messages.c.queue_id).where(
                        messages.c.spool == self.name,
                        messages.c.segment == segment,
                        messages.c.state != tables.REMOVED,
                    )
                )
                .scalars()
                .all()
            )
            tables.delete_segments(conn, self.name, [segment])
        for queue_id in live:
            log.warning(
                logs.event(
                    "removed",
                    queue_id,
                    reason="segment file missing",
                    spool=self.name,
                    segment=segment_name(segment),
                )
            )
        return len(live)

    def _hold(self, queue_id: str, reason: str) -> None:
        messages = tables.messages
        with self._transaction() as conn:
            conn.execute(
                messages.update()
                .where(messages.c.queue_id == queue_id, messages.c.spool == self.name)
                .values(state=tables.HELD)
            )
        log.error(logs.event("held", queue_id, reason=reason))

    def _truncate(self, path: Path, size: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            if self._fsync:
                os.fsync(fd)
                self.fsync_count += 1
        finally:
            os.close(fd)

    # -- The writer thread -------------------------------------------------

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException:
            # A bug. Without this, every later commit() would wait forever.
            log.exception("spool writer died spool=%s", self.name)
            with self._wakeup:
                self._stopping = True
                batch, self._pending = self._pending, []
            for loop, items in _by_loop(batch).items():
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_settle, items, "spool writer died")
            raise

    def _serve(self) -> None:
        while True:
            with self._wakeup:
                while not (self._pending or self._gc_waiters or self._stopping):
                    self._wakeup.wait()
                batch, self._pending = self._pending, []
                gc_waiters, self._gc_waiters = self._gc_waiters, []
                stopping = self._stopping
            if batch:
                self._commit_batch(batch)
            if gc_waiters or self._gc_due:
                self._gc_due = False
                self._run_gc(gc_waiters)
            # commit() refuses work once _stopping is set, under the same
            # lock we took the batch under: nothing can be left behind.
            if stopping:
                return

    def _commit_batch(self, batch: list[_Commit]) -> None:
        try:
            error = self._write_batch(batch)
        except Exception as e:  # a bug: fail the batch, keep the thread up
            log.exception("spool writer failed spool=%s", self.name)
            error = f"spool writer failed: {e}"
        if error is None:
            self.commit_count += len(batch)
        else:
            # One line for the batch: each session logs its own
            # ``rejected`` line with the queue id when it answers 451.
            log.error(
                "spool batch failed spool=%s messages=%d reason=%s",
                self.name,
                len(batch),
                logs.quote(error),
            )
        for loop, items in _by_loop(batch).items():
            # A closed loop has nobody left waiting for the answer.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, items, error)

    def _write_batch(self, batch: list[_Commit]) -> str | None:
        """Write, fsync and index *batch*; None or the reason it failed."""
        buffers: list[bytes] = []
        total = 0
        for item in batch:
            header = encode_header(item.env_json, item.content)
            item.length = HEADER_SIZE + len(item.env_json) + len(item.content)
            buffers += (header, item.env_json, item.content)
            total += item.length

        # Rotate before writing: a batch never spans two segments.
        try:
            if self._fd is None or (
                self._offset and self._offset + total > self._segment_size
            ):
                self._rotate()
        except OSError as e:
            return f"cannot create a spool segment: {e.strerror}"
        assert self._fd is not None and self._active is not None
        start = self._offset
        for item in batch:
            item.offset = self._offset
            self._offset += item.length

        # One write and one fdatasync for the whole batch.
        try:
            _write_all(self._fd, buffers, start)
            if self._fsync:
                os.fdatasync(self._fd)
                self.fsync_count += 1
        except OSError as e:
            # XXX: after a failed fsync we cannot know what reached the
            # disk; we cut the batch off and move to a new segment, but
            # if the cut fails too the records may come back at the next
            # start (a duplicate of a message answered 451, not a loss).
            self._abandon(start, rotate=True)
            return f"spool write failed: {e.strerror}"

        # Index the batch in one transaction, on the spool's connection.
        try:
            with self._transaction() as conn:
                tables.insert_messages(
                    conn,
                    self.name,
                    self._active,
                    [
                        (i.envelope, i.env_json, len(i.content), i.offset, i.length)
                        for i in batch
                    ],
                )
        except Exception as e:
            # Includes IntegrityError for a duplicate queue id, which
            # fails the whole batch.
            # XXX: with one process ids are unique by construction, but
            # ids.py admits a collision between two processes that draw
            # the same counter in the same microsecond, and several
            # workers now commit at once: a rare 451 for a whole batch
            # (the clients retry; nothing is lost), until ids carry a
            # per-process part.
            # Log the driver's error: SQLAlchemy's text adds every
            # parameter, whole envelopes included.
            cause = getattr(e, "orig", None) or e
            log.error(
                "spool index failed spool=%s error=%s", self.name, logs.quote(cause)
            )
            self._abandon(start, rotate=False)
            return f"queue database write failed: {type(e).__name__}"
        return None

    def _abandon(self, start: int, *, rotate: bool) -> None:
        """Cut a failed batch off the active segment (see invariants)."""
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, start)
            if self._fsync:
                os.fdatasync(self._fd)
                self.fsync_count += 1
            self._offset = start
        except OSError:
            rotate = True
        if rotate:
            os.close(self._fd)
            self._fd = None

    def _rotate(self) -> None:
        # XXX: segments grow by appending, so each fdatasync also commits
        # the new file size to the ext4 journal: 2,100 syncs/s measured
        # against 4,100/s when overwriting a pre-zeroed file. Zero-filled
        # preallocation would need recovery to tell an unused zero tail
        # from a torn record; group commit makes the cost matter only to
        # a lone session's latency.
        if self._fd is not None:
            # Already durable: its last batch was fsync'd before we got here.
            os.close(self._fd)
            self._fd = None
            self._gc_due = True
        number = self._next_segment
        path = self.journal_dir / segment_name(number)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._next_segment += 1
        self._set_active(number, fd, 0)
        # The new name must be durable before any record in it is.
        if self._fsync and self._dir_fd is not None:
            os.fsync(self._dir_fd)
            self.fsync_count += 1

    def _open_segment(self, number: int, size: int) -> None:
        path = self.journal_dir / segment_name(number)
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        self._set_active(number, fd, size)

    def _set_active(self, number: int, fd: int, offset: int) -> None:
        self._fd, self._active, self._offset = fd, number, offset

    # -- Garbage collection --------------------------------------------------

    def _run_gc(
        self,
        waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[int]]],
    ) -> None:
        result: int | BaseException
        try:
            result = self._collect_garbage()
        except Exception as e:
            log.exception("spool garbage collection failed spool=%s", self.name)
            result = SpoolError(f"garbage collection failed: {e}")
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle_gc, future, result)

    def _collect_garbage(self) -> int:
        messages = tables.messages
        candidates = [n for n in self._segments_on_disk() if n != self._active]
        doomed = []
        # One indexed probe per segment file (there are few), rather than
        # a DISTINCT over the whole table while commits wait for us.
        with self._transaction() as conn:
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

        # Unlink first: a removed row whose file still exists keeps a
        # recovery scan from resurrecting its record.
        for number in doomed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.journal_dir / segment_name(number))
        if self._fsync:
            self._sync_dir(self.journal_dir)
        with self._transaction() as conn:
            counts = tables.delete_segments(conn, self.name, doomed)
        for number in doomed:
            log.info(
                logs.event(
                    "removed",
                    spool=self.name,
                    segment=segment_name(number),
                    messages=counts.get(number, 0),
                )
            )
        return len(doomed)

    # -- Helpers -------------------------------------------------------------

    def _segments_on_disk(self) -> list[int]:
        numbers = []
        for entry in os.scandir(self.journal_dir):
            match = _SEGMENT_NAME.match(entry.name)
            if match:
                numbers.append(int(match.group(1)))
        return sorted(numbers)

    def _sync_dir(self, path: Path) -> None:
        if not self._fsync:
            return
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
            self.fsync_count += 1
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sa.Connection]:
        """One transaction on the spool's connection, which is opened at
        first use. Every use goes through here, so that no transaction
        stays open between uses (SQLAlchemy begins one at the first
        statement otherwise, and an open read keeps SQLite from
        checkpointing its WAL)."""
        conn = self._conn
        if conn is None:
            conn = self._conn = self._engine.connect()
        try:
            with conn.begin():
                yield conn
        except BaseException:
            # The transaction is rolled back. The connection itself may
            # be what failed (the server went away): replace it at the
            # next use rather than fail every batch after this one.
            self._conn = None
            with contextlib.suppress(Exception):
                conn.close()
            raise

    def _release(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
        for name in ("_fd", "_dir_fd", "_lock_fd"):
            fd = getattr(self, name)
            if fd is not None:
                # Closing the lock file releases the flock.
                os.close(fd)
                setattr(self, name, None)
        self._active = None


def read_message(
    engine: sa.Engine, spool_dir: Path, queue_id: str
) -> tuple[bytes, bytes]:
    """``(envelope JSON, content)`` of a message that is not removed.

    Raises NotFound, SpoolError or SpoolCorrupt (also when the record
    belongs to another queue id, which would be an indexing bug).
    """
    messages = tables.messages
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(
                messages.c.spool,
                messages.c.segment,
                messages.c.offset,
                messages.c.length,
            ).where(messages.c.queue_id == queue_id, messages.c.state != tables.REMOVED)
        ).first()
    if row is None:
        raise NotFound(f"no message with queue id {queue_id}")
    env_json, content = read_record(
        spool_dir, row.spool, row.segment, row.offset, row.length
    )
    if Envelope.from_json(env_json).queue_id != queue_id:
        raise SpoolCorrupt(
            f"record {row.spool}/{segment_name(row.segment)}:{row.offset}"
            f" does not hold message {queue_id}"
        )
    return env_json, content


async def recover_all(
    spool_dir: Path, engine: sa.Engine, *, fsync: bool = True
) -> dict[str, RecoveryReport]:
    """Recover every spool under *spool_dir* that no process owns.

    For the server's parent process, before it starts its workers: a
    spool whose worker is gone (fewer workers after a restart, or a
    different name scheme) would otherwise never be recovered, and its
    removed messages never collected. Each spool (see ``spool_names``)
    is locked, recovered and garbage-collected in turn, then released;
    unlike at ``Spool.start()`` no segment is kept active, so a spool
    whose messages are all removed ends with no segment at all.

    Returns a report per spool recovered. A spool another process owns
    is skipped with a warning: it has a live owner to recover it. Raises
    what ``Spool.start()`` raises when a spool cannot be opened or
    recovered; the spools before it are recovered by then, the ones
    after it are not.

    XXX: only spools with a directory here are found, because in
    cluster mode the database also holds other nodes' spools, which are
    none of this node's business. Rows of a spool whose whole directory
    was deleted stay until an operator deletes them (``queue delete``);
    their content cannot be read.

    XXX: a spool emptied here keeps its directory (``spool.lock`` and an
    empty ``journal/``) for good, because unlinking a lock file that
    another process may just have opened would let two processes each
    hold "the" lock; two inodes per retired worker are cheap.
    """
    reports: dict[str, RecoveryReport] = {}
    for name in spool_names(spool_dir):
        spool = Spool(spool_dir, engine, name=name, fsync=fsync)
        report = await asyncio.to_thread(spool._recover_idle)
        if report is not None:
            reports[name] = report
    return reports


def _scan_segment(path: Path, known: set[int]) -> _Scan:
    """Walk the records of one segment (see ``_Scan``)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return _Scan(size=0, end=0)
        with (
            mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m,
            memoryview(m) as view,
        ):
            return _scan_view(view, size, known)


def _scan_view(view: memoryview, size: int, known: set[int]) -> _Scan:
    scan = _Scan(size=size, end=size)
    pos = 0
    while pos < size:
        header = decode_header(view[pos : pos + HEADER_SIZE])
        if header is None:
            break
        env_len, content_len, crc = header
        end = pos + HEADER_SIZE + env_len + content_len
        if end > size:
            break
        if zlib.crc32(view[pos + HEADER_SIZE : end]) != crc:
            # Torn writes are at the tail; a bad record followed by good
            # ones is damage we skip over (its length is trustworthy, the
            # header has its own crc).
            if end == size:
                break
            scan.corrupt.append(pos)
            pos = end
            continue
        scan.records.add((pos, end - pos))
        if pos not in known:
            env = bytes(view[pos + HEADER_SIZE : pos + HEADER_SIZE + env_len])
            scan.unknown.append((pos, end - pos, env))
        pos = end
    # XXX: scanning stops at the first unreadable header, so a record
    # without a row that sits after one is not found again. Only bit rot,
    # or a crash with fsync=False, puts a bad header before good records,
    # and rows pointing past it are still read directly and kept.
    scan.end = pos
    return scan


def _write_all(fd: int, buffers: Sequence[bytes], offset: int) -> None:
    """Write every byte of *buffers* at *offset*, resuming after short
    writes. Positional, so that cutting a failed batch off with ftruncate
    cannot leave the file position past the end (a hole of zeros)."""
    views = [memoryview(b) for b in buffers if b]
    i = 0
    while i < len(views):
        written = os.pwritev(fd, views[i : i + _IOV_MAX], offset)
        offset += written
        while written and i < len(views):
            if written >= len(views[i]):
                written -= len(views[i])
                i += 1
            else:
                views[i] = views[i][written:]
                written = 0


def _by_loop(
    batch: list[_Commit],
) -> dict[asyncio.AbstractEventLoop, list[_Commit]]:
    # One wake-up per event loop and batch, not one per commit.
    by_loop: defaultdict[asyncio.AbstractEventLoop, list[_Commit]]
    by_loop = defaultdict(list)
    for item in batch:
        by_loop[item.loop].append(item)
    return by_loop


def _settle(items: list[_Commit], error: str | None) -> None:
    # Runs on the committer's event loop. A future may already be done
    # when its task was cancelled (the client went away).
    for item in items:
        if item.future.done():
            continue
        if error is None:
            item.future.set_result(None)
        else:
            item.future.set_exception(SpoolError(error))


def _settle_gc(future: asyncio.Future[int], result: int | BaseException) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
