"""The commit pipeline: group commit into the journal and the queue rows.

Theory of operation
-------------------

Everything but waiting for the disk happens on the event loop's thread.
The loop is busy running SMTP sessions, and every hand-over of the GIL
between it and another thread costs both of them: each SQLite step and
each syscall on another thread releases the GIL, and the busy loop then
has to give it back. So one message goes:

1. ``submit()`` encodes the record header and builds the message's
   queue rows at once, appends them to the pending list and, unless the
   pipeline is busy, schedules a flush with ``call_soon``: every submit
   of the current loop iteration joins one batch.
2. The flush takes the whole pending list, rotates the segment if the
   batch would not fit, and writes the batch with one pwritev at
   explicit offsets (which normally only copies into the page cache;
   see the XXX in ``_write``).
3. ``os.fdatasync`` runs on the *sync thread* (``sync_thread.py``):
   the only work off the loop per batch, one GIL release there (and a
   directory fsync with it when the batch opened a new segment).
4. Back on the loop, the batch's rows go in one transaction on the
   *index connection*, which only the loop's thread uses; then the
   futures resolve, and the next step is scheduled as in 1, so that it
   takes every submit of the loop's current turn.

While one fdatasync is in flight the next batch piles up: that is the
group commit. With ``fsync`` off, steps 3 and 4 run at once.

Steps. Exactly one step is in flight or scheduled at a time (``_busy``):
a batch, from its write to its futures; a garbage collection; or a WAL
checkpoint. The last two run on the sync thread with the directory's
maintenance connection, between batches, so that they never overlap a
batch and never block the loop. After each step, ``_next_step`` picks
the next: a collection if one is due (after a rotation, or asked for),
then a checkpoint if due, then a batch if anything is pending, else
the pipeline goes idle until the next ``_wake``.

Failures. A batch whose write, fdatasync or index fails is cut off its
segment (ftruncate, and an fdatasync of the cut, on the sync thread)
before its futures fail with SpoolError, so that a message answered 451
does not come back at the next start; after a failed write or fsync the
segment is left for a new one, since what reached the disk is unknown.
Then the pipeline goes on with the next batch. An exception that
escapes a step anyway is a bug: the pipeline fails everything it holds
and refuses more (``_step``), rather than leave commits waiting forever.

SQLite. The index connection must never block the loop. It does not
checkpoint the WAL itself (that takes tens of milliseconds, fsyncs
included, every thousand pages): the pipeline does, as a step, once its
estimate of the pages written reaches SQLite's own threshold. And it
does not wait for a lock that another process holds (another worker's
spool, the CLI): its busy timeout is zero, and a batch that finds the
database locked is indexed again a little later (``_index_later``),
backing off as SQLite's own busy handler would, while the loop goes on.

Everything here runs on the loop's thread except the functions marked
as running on the sync thread.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Concatenate, ParamSpec, TypeVar

import sqlalchemy as sa

from postroom import events, logs
from postroom.errors import SpoolError
from postroom.queue import journal
from postroom.queue.directory import Connection, SpoolDirectory, is_busy
from postroom.queue.envelope import Envelope
from postroom.queue.sync_thread import SyncThread
from postroom.store import queue as tables

log = logging.getLogger(__name__)

_P = ParamSpec("_P")
_T = TypeVar("_T")

# SQLite's WAL is checkpointed once about this many pages were written
# to it since the last checkpoint: SQLite's own default. The pages are
# estimated (there is no cheap way to ask): measured on our schema, a
# batch writes about 8 pages plus one per two messages.
_CHECKPOINT_PAGES = 1000
_PAGES_PER_BATCH = 8
# Seconds between tries to index a batch while another process holds
# SQLite's write lock (SQLite's own busy handler sleeps as long, but on
# the caller's thread), and how long to keep trying: the engine's busy
# timeout (store/db.py).
_BUSY_DELAYS = (0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.05, 0.1)
_BUSY_TIMEOUT = 30.0
_DEAD = "spool failed; see the log"


@dataclass(slots=True)
class Segment:
    """The segment the pipeline appends to: its file, number and size."""

    fd: int
    number: int
    size: int


@dataclass(slots=True)
class _Commit:
    """One submitted message, ready to be written and indexed."""

    header: bytes
    env_json: bytes
    content: bytes
    length: int  # of the whole record
    row: tuple[object, ...]  # tables.message_row: all but the place
    recipients: list[tuple[object, ...]]
    processed: list[events.Row]  # its "processed" events
    future: asyncio.Future[None]
    offset: int = 0


@dataclass(slots=True)
class _Batch:
    """The commits written together, and where: a new segment's name
    must be made durable with its first batch."""

    items: list[_Commit]
    fd: int
    segment: int
    start: int
    new_segment: bool
    busy_tries: int = 0  # times indexing found the database locked
    busy_waited: float = 0.0


def _step(
    method: Callable[Concatenate[CommitPipeline, _P], None],
) -> Callable[Concatenate[CommitPipeline, _P], None]:
    """Mark a method the event loop calls back into the pipeline with
    (by ``call_soon`` or ``call_later``, or with a sync thread result).

    Each step catches the failures it expects and fails its batch. An
    exception that escapes one anyway is a bug that may have left the
    pipeline in any state: without this, every later commit would wait
    forever; with it, they fail at once, and the loop's exception
    handler still sees the bug.
    """

    @functools.wraps(method)
    def run(pipeline: CommitPipeline, /, *args: _P.args, **kwargs: _P.kwargs) -> None:
        try:
            method(pipeline, *args, **kwargs)
        except BaseException:
            pipeline._die()
            raise

    return run


class CommitPipeline:
    """The commit path of one started spool (module docstring).

    Made by ``Spool.start`` on the event loop it is to run on, from the
    locked and recovered *directory*: *active* is the segment recovery
    left open for appending (the pipeline owns its descriptor from now
    on), *next_segment* the number the next new one gets.
    """

    def __init__(
        self,
        directory: SpoolDirectory,
        engine: sa.Engine,
        *,
        active: Segment | None,
        next_segment: int,
        segment_size: int,
        fsync: bool,
    ) -> None:
        self.commit_count = 0
        self._loop = asyncio.get_running_loop()
        self._dir = directory
        self._name = directory.name
        self._fsync = fsync
        self._segment_size = segment_size
        self._sqlite = engine.dialect.name == "sqlite"
        self._db = Connection(
            engine,
            pragmas=["PRAGMA wal_autocheckpoint=0", "PRAGMA busy_timeout=0"]
            if self._sqlite
            else [],
        )
        self._sync_thread: SyncThread | None = None
        self._wal_pages = 0  # estimated, since the last checkpoint

        # The active segment; none until the first batch if recovery
        # left none appendable.
        self._fd = active.fd if active else None
        self._active = active.number if active else None
        self._offset = active.size if active else 0
        self._next_segment = next_segment

        # _busy: a step is scheduled or in flight; _in_flight: the
        # commits of the batch in it, if any.
        self._busy = False
        self._dead = False
        self._in_flight: list[_Commit] = []
        self._pending: list[_Commit] = []
        self._gc_due = False
        self._gc_waiters: list[asyncio.Future[int]] = []
        self._idle_waiters: list[asyncio.Future[None]] = []

    def start(self) -> None:
        """Connect the index connection (here, so that it is the loop's
        own) and start the sync thread."""
        self._db.open()
        self._sync_thread = SyncThread(self._loop, f"postroom-spool-{self._name}")

    def submit(self, envelope: Envelope, content: bytes) -> asyncio.Future[None]:
        """See ``Spool.submit``."""
        if self._dead:
            raise SpoolError(_DEAD)
        if len(content) > journal.MAX_PART:
            raise SpoolError("message too large for the spool")

        # All the per-message work, so that the flush has only to write.
        env_json = envelope.to_json()
        size = len(content)
        length = journal.HEADER_SIZE + len(env_json) + size
        future: asyncio.Future[None] = self._loop.create_future()
        self._pending.append(
            _Commit(
                journal.encode_header(env_json, content),
                env_json,
                content,
                length,
                tables.message_row(self._name, envelope, env_json, size, length),
                tables.new_recipient_rows(envelope),
                events.processed_rows(envelope),
                future,
            )
        )
        self._wake()
        return future

    def collect_garbage(self) -> asyncio.Future[int]:
        """A collection as the next step; resolves to how many segments
        were unlinked."""
        if self._dead:
            raise SpoolError(_DEAD)
        future: asyncio.Future[int] = self._loop.create_future()
        self._gc_waiters.append(future)
        self._wake()
        return future

    async def drain(self) -> None:
        """Return once every step asked for so far has run."""
        if self._busy:
            idle: asyncio.Future[None] = self._loop.create_future()
            self._idle_waiters.append(idle)
            await idle

    def close(self) -> None:
        """Stop the sync thread; close the segment and the connection.
        Call ``drain`` first: this waits for nothing but the thread's
        end, and a step still running would lose its segment."""
        if self._sync_thread is not None:
            # Drained, the thread is idle: this only joins it.
            self._sync_thread.stop()
            self._sync_thread = None
        self._db.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- Scheduling ------------------------------------------------------------

    def _wake(self) -> None:
        # Later submits of this loop iteration find _busy set and join
        # the batch the scheduled step takes.
        if not self._busy:
            self._busy = True
            self._loop.call_soon(self._next_step)

    def _step_done(self) -> None:
        # Like _wake, and for the same reason: the next step takes the
        # submits of the loop's current turn too (sessions whose DATA the
        # loop has just read), rather than start before they come.
        # Measured with 20 smtp-source sessions on 2 cores: about 10
        # messages per fsync instead of 8, and 10-20% less CPU per
        # message for the whole server.
        self._loop.call_soon(self._next_step)

    @_step
    def _next_step(self) -> None:
        """Start the next step, or go idle."""
        # A collection first: after a rotation or when asked for, it must
        # not wait for a lull that a busy server never has.
        if self._gc_due or self._gc_waiters:
            self._collect()
        elif self._wal_pages >= _CHECKPOINT_PAGES:
            self._checkpoint()
        elif self._pending:
            self._in_flight, self._pending = self._pending, []
            self._write(self._in_flight)
        else:
            self._busy = False
            _resolve(self._idle_waiters, None)

    def _die(self) -> None:
        """A step raised (see ``_step``): fail everything, refuse more."""
        log.exception("spool failed spool=%s", self._name)
        self._dead = True
        self._busy = False
        items = self._in_flight + self._pending
        self._in_flight, self._pending = [], []
        _settle(items, _DEAD)
        _resolve(self._gc_waiters, SpoolError(_DEAD))
        _resolve(self._idle_waiters, None)

    # -- A batch ---------------------------------------------------------------

    def _write(self, items: list[_Commit]) -> None:
        """Step 2: place and write the batch, then sync or index it."""
        # Rotate before writing: a batch never spans two segments.
        total = sum(item.length for item in items)
        new_segment = self._fd is None or bool(
            self._offset and self._offset + total > self._segment_size
        )
        if new_segment:
            try:
                self._rotate()
            except OSError as e:
                self._fail(items, f"cannot create a spool segment: {e.strerror}")
                return
        assert self._fd is not None and self._active is not None
        batch = _Batch(items, self._fd, self._active, self._offset, new_segment)
        buffers: list[bytes] = []
        offset = batch.start
        for item in items:
            item.offset = offset
            offset += item.length
            buffers += (item.header, item.env_json, item.content)
        self._offset = offset

        # XXX: a buffered write can still block the loop, when the kernel
        # throttles a process that dirties pages faster than the disk
        # takes them, or waits for the ext4 journal (so can creating a
        # segment in _rotate). Measured: well under a millisecond as a
        # rule, but now and then tens of milliseconds with two spools
        # writing flat out on one 2-core VM. Handing the write to the
        # sync thread with the fdatasync would avoid that, for a second
        # GIL hand-over per batch; not done until a real load shows it.
        try:
            journal.write_all(batch.fd, buffers, batch.start)
        except Exception as e:
            self._cut(batch, f"spool write failed: {_reason(e)}", rotate=True)
            return
        if not self._fsync:
            self._index(batch)
            return
        dir_fd = self._dir.dir_fd if new_segment else None
        assert self._sync_thread is not None
        self._sync_thread.call(
            functools.partial(self._synced, batch), _sync, batch.fd, dir_fd
        )

    @_step
    def _synced(self, batch: _Batch, _: None, error: BaseException | None) -> None:
        """Step 3 done: index the batch, or cut it off if the sync failed."""
        if error is not None:
            # XXX: after a failed fsync we cannot know what reached the
            # disk; we cut the batch off and move to a new segment, but
            # if the cut fails too the records may come back at the next
            # start (a duplicate of a message answered 451, not a loss).
            self._cut(batch, f"spool write failed: {_reason(error)}", rotate=True)
            return
        self._dir.fsync_count += 2 if batch.new_segment else 1
        self._index(batch)

    def _index(self, batch: _Batch) -> None:
        """Step 4: the batch's rows in one transaction, then the answers."""
        try:
            with self._db.transaction() as conn:
                tables.insert_rows(
                    conn,
                    [(*i.row, batch.segment, i.offset) for i in batch.items],
                    [row for i in batch.items for row in i.recipients],
                )
                # "processed" commits with the rows that queue the
                # message: accepted and announced, or neither.
                events.record(conn, [e for i in batch.items for e in i.processed])
        except Exception as e:
            if is_busy(e) and self._index_later(batch):
                return
            # Includes IntegrityError for a duplicate queue id, which
            # fails the whole batch.
            # XXX: ids are unique within a process by construction, but
            # two processes can make the same id in the same microsecond
            # (ids.py gives the odds), and several workers commit at
            # once: a rare 451 for a whole batch; the clients retry and
            # nothing is lost.
            # Log the driver's error: SQLAlchemy's text adds every
            # parameter, whole envelopes included.
            cause = getattr(e, "orig", None) or e
            log.error(
                "spool index failed spool=%s error=%s", self._name, logs.quote(cause)
            )
            self._cut(batch, f"queue database write failed: {type(e).__name__}")
            return
        self.commit_count += len(batch.items)
        self._in_flight = []
        _settle(batch.items, None)
        if self._sqlite:
            self._wal_pages += _PAGES_PER_BATCH + len(batch.items) // 2
        self._step_done()

    def _index_later(self, batch: _Batch) -> bool:
        """Index *batch* again shortly, backing off; False once it has
        waited ``_BUSY_TIMEOUT`` seconds in all."""
        delay = _BUSY_DELAYS[min(batch.busy_tries, len(_BUSY_DELAYS) - 1)]
        if batch.busy_waited + delay > _BUSY_TIMEOUT:
            return False
        batch.busy_tries += 1
        batch.busy_waited += delay
        self._loop.call_later(delay, self._index_again, batch)
        return True

    @_step
    def _index_again(self, batch: _Batch) -> None:
        self._index(batch)

    # -- Failures --------------------------------------------------------------

    def _cut(self, batch: _Batch, error: str, *, rotate: bool = False) -> None:
        """Cut a failed batch off its segment, then fail it; with
        *rotate*, or if the cut fails, leave the segment for a new one."""
        if not self._fsync:
            self._cut_off(batch, error, rotate, _truncate(batch.fd, batch.start))
            return
        assert self._sync_thread is not None
        self._sync_thread.call(
            functools.partial(self._cut_synced, batch, error, rotate),
            _truncate,
            batch.fd,
            batch.start,
            True,
        )

    @_step
    def _cut_synced(
        self,
        batch: _Batch,
        error: str,
        rotate: bool,
        cut_error: OSError | None,
        bug: BaseException | None,
    ) -> None:
        if bug is not None:
            raise bug
        if cut_error is None:
            self._dir.fsync_count += 1
        self._cut_off(batch, error, rotate, cut_error)

    def _cut_off(
        self, batch: _Batch, error: str, rotate: bool, cut_error: OSError | None
    ) -> None:
        if cut_error is None:
            self._offset = batch.start
        else:
            rotate = True
        if rotate and self._fd == batch.fd:
            os.close(batch.fd)
            self._fd = None
        self._fail(batch.items, error)

    def _fail(self, items: list[_Commit], error: str) -> None:
        # One line for the batch: each session logs its own ``rejected``
        # line with the queue id when it answers 451.
        log.error(
            "spool batch failed spool=%s messages=%d reason=%s",
            self._name,
            len(items),
            logs.quote(error),
        )
        self._in_flight = []
        _settle(items, error)
        self._step_done()

    # -- Segments, garbage, the WAL ------------------------------------------------

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
        path = self._dir.journal_dir / journal.segment_name(number)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._next_segment += 1
        self._fd, self._active, self._offset = fd, number, 0

    def _collect(self) -> None:
        """A step: collect garbage on the sync thread."""
        waiters, self._gc_waiters = self._gc_waiters, []
        self._gc_due = False
        assert self._sync_thread is not None
        self._sync_thread.call(
            functools.partial(self._collected, waiters),
            self._dir.collect_garbage,
            self._active,
        )

    @_step
    def _collected(
        self,
        waiters: list[asyncio.Future[int]],
        collected: int | None,
        error: BaseException | None,
    ) -> None:
        if error is None:
            assert collected is not None
            _resolve(waiters, collected)
        else:
            log.error(
                "spool garbage collection failed spool=%s error=%s",
                self._name,
                logs.quote(error),
            )
            _resolve(waiters, SpoolError(f"garbage collection failed: {error}"))
        self._step_done()

    def _checkpoint(self) -> None:
        """A step: checkpoint SQLite's WAL on the sync thread
        (``SpoolDirectory.checkpoint``), between batches so that no write
        of ours overtakes it. Our commits wait meanwhile, as they did
        for SQLite's own checkpoint inside a commit; the loop does not.

        XXX: that wait, 15-20 ms measured here (two fsyncs and a
        thousand pages), comes once in about a hundred batches and sets
        the p99 of commit latency at full load, as it did before.
        Running it beside our writes would let them overtake it, and
        the WAL would grow.
        """
        self._wal_pages = 0
        assert self._sync_thread is not None
        self._sync_thread.call(self._checkpointed, self._dir.checkpoint)

    @_step
    def _checkpointed(self, pages: int | None, error: BaseException | None) -> None:
        if error is not None:
            log.error(
                "spool checkpoint failed spool=%s error=%s",
                self._name,
                logs.quote(getattr(error, "orig", None) or error),
            )
        elif pages is not None and pages >= 2 * _CHECKPOINT_PAGES:
            # The WAL has not been started over since the last checkpoint
            # (see SpoolDirectory.checkpoint): like SQLite's own, try
            # again after each batch until it is.
            self._wal_pages = _CHECKPOINT_PAGES - 1
        self._step_done()


# -- On the sync thread --------------------------------------------------------


def _sync(fd: int, dir_fd: int | None) -> None:
    """Make a batch durable: the only per-batch work off the loop."""
    if dir_fd is not None:
        os.fsync(dir_fd)  # a new segment's name, with its first batch
    os.fdatasync(fd)


def _truncate(fd: int, size: int, sync: bool = False) -> OSError | None:
    """Cut *fd* back to *size* (and make that durable); the error, if
    the cut failed, rather than raised: the caller carries on."""
    try:
        os.ftruncate(fd, size)
        if sync:
            os.fdatasync(fd)
    except OSError as e:
        return e
    return None


# -- Helpers -------------------------------------------------------------------


def _settle(items: list[_Commit], error: str | None) -> None:
    # A future may already be done when its task was cancelled (the
    # client went away).
    for item in items:
        if item.future.done():
            continue
        if error is None:
            item.future.set_result(None)
        else:
            item.future.set_exception(SpoolError(error))


def _resolve(waiters: list[asyncio.Future[_T]], result: _T | BaseException) -> None:
    for waiter in waiters:
        if waiter.done():
            continue
        if isinstance(result, BaseException):
            waiter.set_exception(result)
        else:
            waiter.set_result(result)
    waiters.clear()


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return f"{type(error).__name__}: {error}"
