"""The spool: makes accepted messages durable before the 250 reply.

Theory of operation
-------------------

Parts. A spool is one named journal in a directory that one process
owns, plus the queue rows that point into it (``store/queue.py``: by
spool name, segment number, offset and length). Its parts, one module
each:

- ``journal.py``: the record format; writing, reading and scanning
  segment files.
- ``directory.py``: the owner's side of the directory: the lock,
  fsyncs, garbage collection, WAL checkpoints.
- ``recovery.py``: the scan at start that mends journal and rows.
- ``pipeline.py``: the commit path, a group commit whose only work off
  the event loop is the fdatasync, on the thread of ``sync_thread.py``.
- this module: the spool's life (start, submit, close) and reading a
  message back by queue id.

Several spools. Each SMTP worker process owns a spool of its own (its
own lock, journal and commit pipeline) and all of them share one
database; in cluster mode several nodes will share it too. Segment
numbers are per spool, so everything a spool asks the database about
its own rows (recovery, garbage collection) is filtered by its name: a
spool never reads another's rows as its own, never deletes them, and
only ever unlinks files in its own directory. Names must therefore be
unique among all spools on one database, not only on one host.
``recover_all()`` lets the server's parent process recover the spools
that no worker will open, for example after the number of workers went
down.

Invariants.

- A future resolves successfully only after its record is fsync'd and
  its rows are committed: the SMTP server may answer 250.
- Once the spool is started, only its pipeline writes, truncates,
  creates or unlinks segment files, one step at a time, so there is no
  lock around them.
- Only the last batch written can be incomplete on disk, because each
  batch is fsync'd before the next is written; a torn record can
  therefore only be at the tail of the active segment, and none of its
  messages was answered 250.
- A record without a row is either the victim of a power loss (SQLite
  runs ``synchronous=NORMAL``, so its last transactions may be lost
  while the fsync'd journal is not) or garbage that recovery ignores.
  When a batch fails after its write, its bytes are cut off before its
  futures fail, so that a message answered 451 does not come back at
  the next start.
- A new segment's name is fsync'd (its directory) with the first batch
  written to it, before any of that batch's futures resolve.
- A row stays, in state ``removed``, until its segment is unlinked, so
  recovery never mistakes a removed message for one whose row was lost.

Life. ``start()`` takes the lock and runs the recovery scan on a thread
(garbage is collected then too), then starts the pipeline on the
calling event loop. Later collections run after each rotation and when
``collect_garbage()`` is called (the server calls it after it removes
messages). ``close()`` lets the pipeline finish what it was given.

Who may call what: ``start``, ``commit``, ``submit``,
``collect_garbage`` and ``close`` from the event loop that started the
spool (``commit`` from any number of tasks); ``read_content``,
``read_message`` and ``read_record`` from any thread or process, also
while another process owns the spool; ``recover_all`` while no process
owns the spools it is to recover (it skips those that are owned).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import sqlalchemy as sa

from postroom.errors import NotFound, SpoolCorrupt, SpoolError
from postroom.queue import recovery
from postroom.queue.directory import SpoolDirectory
from postroom.queue.envelope import Envelope
from postroom.queue.journal import (
    DEFAULT_NAME,
    HEADER_SIZE,
    MAGIC,
    check_name,
    decode_header,
    encode_header,
    read_record,
    segment_name,
    segment_path,
    spool_names,
)
from postroom.queue.pipeline import CommitPipeline, Segment
from postroom.queue.recovery import RecoveryReport, recover_all
from postroom.store import queue as tables

# Other modules import these from here, wherever they live.
__all__ = [
    "DEFAULT_NAME",
    "HEADER_SIZE",
    "MAGIC",
    "RecoveryReport",
    "Spool",
    "check_name",
    "decode_header",
    "encode_header",
    "read_message",
    "read_record",
    "recover_all",
    "segment_name",
    "segment_path",
    "spool_names",
]


class Spool:
    """One named spool: one process's journal and the queue rows that
    point into it; see the module docstring.

    *spool_dir* is the directory all spools of the node live under; this
    one uses ``<spool_dir>/<name>/``. Raises ValueError for a bad *name*
    (see ``journal.check_name``). With *fsync* false nothing is ever
    fsync'd (tests, benchmarks); *segment_size* is the size past which
    a batch goes to a new segment.
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
        self._dir = SpoolDirectory(spool_dir, engine, name, fsync=fsync)
        self.name = self._dir.name
        self.spool_dir = self._dir.spool_dir
        self.path = self._dir.path
        self.journal_dir = self._dir.journal_dir
        self._engine = engine
        self._fsync = fsync
        self._segment_size = segment_size
        self._pipeline: CommitPipeline | None = None
        self._running = False
        self._stopping = False

    @property
    def fsync_count(self) -> int:
        """fsyncs and fdatasyncs done so far, of any file or directory."""
        return self._dir.fsync_count

    @property
    def commit_count(self) -> int:
        """Messages committed since start."""
        return self._pipeline.commit_count if self._pipeline else 0

    async def start(self) -> RecoveryReport:
        """Lock the spool, run the recovery scan, start the pipeline.

        Raises SpoolError if another process owns the spool or the spool
        directory cannot be prepared.
        """
        if self._running or self._stopping:
            raise SpoolError("a Spool starts once; make a new one to reopen")
        active: Segment | None = None
        try:
            recovered, active = await asyncio.to_thread(self._open)
            self._pipeline = CommitPipeline(
                self._dir,
                self._engine,
                active=active,
                next_segment=recovered.next_segment,
                segment_size=self._segment_size,
                fsync=self._fsync,
            )
            active = None  # the pipeline's now
            self._pipeline.start()
        except BaseException:
            if active is not None:
                os.close(active.fd)
            self._release()
            raise
        self._running = True
        return recovered.report

    async def commit(self, envelope: Envelope, content: bytes) -> None:
        """Store *envelope* and *content*; return once both are durable
        and the message is in the queue tables.

        Raises SpoolError when the message could not be stored; the
        caller answers 451 and the client retries. If the calling task is
        cancelled, the message may still become queued.
        """
        await self.submit(envelope, content)

    def submit(self, envelope: Envelope, content: bytes) -> asyncio.Future[None]:
        """Hand a message to the next batch; the future resolves as
        ``commit`` returns. For callers on the hot path that would rather
        add a callback than spend a task per message (the SMTP session).

        Raises SpoolError at once if the spool is not running, is
        closing or has failed, or if the message cannot fit a record.
        """
        if not self._running:
            raise SpoolError("spool is not running")
        if self._stopping:
            raise SpoolError("spool is closing")
        assert self._pipeline is not None
        return self._pipeline.submit(envelope, content)

    async def collect_garbage(self) -> int:
        """Unlink segments whose messages are all removed; return how many.

        Runs on the pipeline's sync thread, between batches.
        """
        if not self._running:
            raise SpoolError("spool is not running")
        if self._stopping:
            raise SpoolError("spool is closing")
        assert self._pipeline is not None
        return await self._pipeline.collect_garbage()

    def read_content(self, queue_id: str) -> bytes:
        """The content of queued message *queue_id*, checksum verified.

        Blocking (one pread): call it through ``asyncio.to_thread`` for
        large messages. Raises NotFound, SpoolError or SpoolCorrupt.
        """
        return read_message(self._engine, self.spool_dir, queue_id)[1]

    async def close(self) -> None:
        """Finish pending commits and collections, stop the pipeline,
        close the database connections and release the lock."""
        if self._running:
            self._stopping = True
            assert self._pipeline is not None
            await self._pipeline.drain()
        self._running = False
        self._release()

    def _open(self) -> tuple[recovery.Recovered, Segment | None]:
        """Lock and recover, on a thread; open the segment to append to."""
        owner = self._dir.lock()
        if owner is not None:
            raise SpoolError(
                f"spool {self.path} is in use by another process (pid {owner})"
            )
        recovered = recovery.recover(
            self._dir, segment_size=self._segment_size, keep_active=True
        )
        if recovered.active is None:
            return recovered, None
        number, size = recovered.active
        path = self.journal_dir / segment_name(number)
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        return recovered, Segment(fd, number, size)

    def _release(self) -> None:
        if self._pipeline is not None:
            self._pipeline.close()
        self._dir.release()


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
