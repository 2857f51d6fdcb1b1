"""The spool's commit pipeline: batching, threads, failures.

What ``test_spool.py`` checks from the outside (durability, recovery),
this file checks from the inside: which submits share a batch and an
fdatasync, which thread does what, and how each failure cuts its batch
off and lets the next one through.

The disk is not slowed down for real: ``os.fdatasync`` is replaced by a
gate (``Gate``) that holds the sync thread until the test opens it, so
that a test can act while an fsync is in flight.

Coverage gap, stated plainly: that the WAL stays bounded while several
processes commit at once (checkpoints retried until one lets the WAL
start over) was checked with two benchmark processes, not here; a test
would need seconds of load from two processes to show anything.
"""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from postroom.errors import NotFound, SpoolError
from postroom.ids import new_queue_id
from postroom.queue import directory, journal, pipeline
from postroom.queue.envelope import Envelope, Recipient
from postroom.queue.spool import Spool
from postroom.store import db
from postroom.store import queue as tables

# How long a test waits for the sync thread before calling it stuck.
WAIT = 10.0


def envelope(queue_id: str | None = None) -> Envelope:
    return Envelope(
        queue_id=queue_id or new_queue_id(),
        sender="alice@example.org",
        recipients=[Recipient("bob@example.net"), Recipient("carol@example.net")],
        received_at=1_700_000_000.5,
    )


def segment_size(spool: Spool, number: int = 1) -> int:
    return (spool.journal_dir / journal.segment_name(number)).stat().st_size


class Gate:
    """Stands in for ``os.fdatasync``: records each call (thread, file
    size), then waits until the test opens the gate. ``fail`` makes the
    next call raise instead, after the wait."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []  # (thread id, size synced)
        self.open = threading.Event()
        self.fail: OSError | None = None
        self._real = os.fdatasync

    def __call__(self, fd: int) -> None:
        self.calls.append((threading.get_ident(), os.fstat(fd).st_size))
        if not self.open.wait(WAIT):
            raise AssertionError("the gate was never opened")
        error, self.fail = self.fail, None
        if error is not None:
            raise error
        self._real(fd)

    async def wait_calls(self, count: int) -> None:
        """Until *count* fdatasyncs have started (the last may be held)."""
        deadline = asyncio.get_running_loop().time() + WAIT
        while len(self.calls) < count:
            assert asyncio.get_running_loop().time() < deadline, "no fdatasync"
            await asyncio.sleep(0.001)


@pytest.fixture
def engine(tmp_path: Path) -> sa.Engine:
    return db.create_engine(f"sqlite:///{tmp_path / 'postroom.db'}")


@pytest.fixture
async def spool(tmp_path: Path, engine: sa.Engine) -> AsyncIterator[Spool]:
    s = Spool(tmp_path / "spool", engine)
    await s.start()
    yield s
    await s.close()


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    g = Gate()
    monkeypatch.setattr(os, "fdatasync", g)
    yield g
    g.open.set()  # never leave the sync thread stuck


async def settle(*futures: asyncio.Future[None]) -> list[BaseException | None]:
    """Wait for *futures*; each one's exception, or None."""
    await asyncio.wait_for(asyncio.wait(futures), WAIT)
    return [f.exception() for f in futures]


# -- Batching ------------------------------------------------------------------


async def test_submits_of_one_loop_iteration_make_one_batch(
        spool: Spool, gate: Gate) -> None:
    gate.open.set()
    fsyncs = spool.fsync_count
    await spool.commit(envelope(), b"first")  # the segment exists now
    assert spool.fsync_count == fsyncs + 2  # the new segment's directory too
    start = segment_size(spool)

    # No await between the submits: all of them join the same batch.
    envs = [envelope() for _ in range(10)]
    futures = [spool.submit(e, e.queue_id.encode()) for e in envs]
    assert not any(f.done() for f in futures)
    assert await settle(*futures) == [None] * 10

    assert spool.fsync_count == fsyncs + 3
    assert len(gate.calls) == 2
    assert spool.commit_count == 11
    # One batch: written back to back, in the order submitted.
    offset = start
    for e in envs:
        record = journal.read_record(
            spool.spool_dir, spool.name, 1, offset,
            journal.HEADER_SIZE + len(e.to_json()) + len(e.queue_id))
        assert record == (e.to_json(), e.queue_id.encode())
        offset += journal.HEADER_SIZE + len(e.to_json()) + len(e.queue_id)
    assert gate.calls[-1][1] == offset == segment_size(spool)


async def test_submits_during_an_fsync_go_into_the_next_one(
        spool: Spool, gate: Gate) -> None:
    first = spool.submit(envelope(), b"first")
    await gate.wait_calls(1)
    size_first = segment_size(spool)

    # The first fsync is in flight: these pile up behind it.
    later = [spool.submit(envelope(), b"later") for _ in range(5)]
    await asyncio.sleep(0.01)
    assert not first.done()  # not durable yet, so not answered
    assert segment_size(spool) == size_first  # nor written before it is
    assert len(gate.calls) == 1

    gate.open.set()
    assert await settle(first, *later) == [None] * 6
    # Two fdatasyncs in all: the first batch's and the five's.
    assert [size for _, size in gate.calls] == [size_first, segment_size(spool)]
    assert spool.commit_count == 6


async def test_a_future_resolves_only_after_its_fdatasync(
        spool: Spool, gate: Gate, engine: sa.Engine) -> None:
    env = envelope()
    future = spool.submit(env, b"x")
    await gate.wait_calls(1)
    for _ in range(20):
        await asyncio.sleep(0)
    assert not future.done()
    # The record is written but not yet indexed: nobody can find it.
    with pytest.raises(NotFound):
        spool.read_content(env.queue_id)

    gate.open.set()
    await settle(future)
    assert future.result() is None
    assert spool.read_content(env.queue_id) == b"x"


async def test_the_loop_indexes_and_the_sync_thread_only_syncs(
        spool: Spool, gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    gate.open.set()
    indexed_on: list[int] = []
    real_insert = tables.insert_rows

    def insert_rows(*args: object) -> None:
        indexed_on.append(threading.get_ident())
        real_insert(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(tables, "insert_rows", insert_rows)
    await asyncio.gather(*(spool.commit(envelope(), b"x") for _ in range(3)))

    loop_thread = threading.get_ident()
    assert indexed_on == [loop_thread]
    assert {thread for thread, _ in gate.calls} - {loop_thread}
    assert loop_thread not in {thread for thread, _ in gate.calls}


async def test_the_index_connection_never_checkpoints_or_waits(
        spool: Spool) -> None:
    assert spool._pipeline is not None
    with spool._pipeline._db.transaction() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 0


async def test_the_wal_is_checkpointed_on_the_sync_thread(
        spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "_CHECKPOINT_PAGES", 20)
    threads: list[int] = []
    real = directory.SpoolDirectory.checkpoint

    def checkpoint(self: directory.SpoolDirectory) -> int:
        threads.append(threading.get_ident())
        return real(self)

    monkeypatch.setattr(directory.SpoolDirectory, "checkpoint", checkpoint)
    for _ in range(6):  # ~9 pages a batch: a checkpoint after the third
        await spool.commit(envelope(), b"x")
    assert threads
    assert threading.get_ident() not in threads


async def test_fsync_off_needs_no_sync_thread(
        tmp_path: Path, engine: sa.Engine, gate: Gate) -> None:
    s = Spool(tmp_path / "spool", engine, fsync=False)
    await s.start()
    envs = [envelope() for _ in range(5)]
    await asyncio.gather(*(s.commit(e, b"x") for e in envs))
    assert gate.calls == []
    assert s.fsync_count == 0
    assert s.read_content(envs[-1].queue_id) == b"x"
    await s.close()


async def test_a_new_segment_name_is_synced_with_its_first_batch(
        tmp_path: Path, engine: sa.Engine,
        monkeypatch: pytest.MonkeyPatch) -> None:
    s = Spool(tmp_path / "spool", engine, segment_size=1)  # a segment each
    await s.start()
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    await s.commit(envelope(), b"x")
    await s.commit(envelope(), b"y")
    assert synced.count(str(s.journal_dir)) == 2
    await s.close()


# -- Failures ------------------------------------------------------------------


async def test_a_failed_fsync_fails_its_batch_only(
        spool: Spool, gate: Gate) -> None:
    gate.open.set()
    await spool.commit(envelope(), b"before")
    size = segment_size(spool)
    gate.open.clear()

    doomed = [spool.submit(envelope(), b"doomed") for _ in range(3)]
    await gate.wait_calls(2)
    gate.fail = OSError(errno.EIO, "Input/output error")
    after = [spool.submit(envelope(), b"after") for _ in range(2)]
    gate.open.set()

    errors = await settle(*doomed, *after)
    assert all(isinstance(e, SpoolError) and "Input/output error" in str(e)
               for e in errors[:3])
    assert errors[3:] == [None, None]
    # Cut off, and the spool moved on to a new segment.
    assert segment_size(spool, 1) == size
    assert segment_size(spool, 2) > 0
    assert spool.commit_count == 3


async def test_a_failed_write_cuts_the_batch_off(
        spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    await spool.commit(envelope(), b"before")
    size = segment_size(spool)
    real = os.pwritev

    def short_then_full(fd: int, buffers: list[memoryview], offset: int) -> int:
        # Half the batch reaches the file, then the disk is full.
        real(fd, [bytes(buffers[0])[:7]], offset)
        monkeypatch.setattr(os, "pwritev", real)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwritev", short_then_full)
    with pytest.raises(SpoolError, match="No space left on device"):
        await spool.commit(envelope(), b"doomed")
    assert segment_size(spool, 1) == size

    env = envelope()
    await spool.commit(env, b"after")
    assert spool.read_content(env.queue_id) == b"after"


async def test_an_index_failure_fails_the_whole_batch(spool: Spool) -> None:
    taken = envelope()
    await spool.commit(taken, b"taken")
    size = segment_size(spool)

    batch = [envelope(), envelope(taken.queue_id), envelope()]
    errors = await settle(*(spool.submit(e, b"x") for e in batch))
    assert all(isinstance(e, SpoolError) and "queue database" in str(e)
               for e in errors)
    assert segment_size(spool) == size  # cut off; the segment stays active
    for e in (batch[0], batch[2]):
        with pytest.raises(NotFound):
            spool.read_content(e.queue_id)

    await spool.commit(batch[0], b"again")
    assert spool.read_content(batch[0].queue_id) == b"again"


async def test_a_failed_cut_abandons_the_segment(
        spool: Spool, gate: Gate, engine: sa.Engine,
        monkeypatch: pytest.MonkeyPatch) -> None:
    gate.open.set()
    await spool.commit(envelope(), b"before")
    real = os.ftruncate

    def no_truncate(fd: int, size: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "ftruncate", no_truncate)
    gate.fail = OSError(errno.EIO, "Input/output error")
    with pytest.raises(SpoolError):
        await spool.commit(envelope(), b"doomed")
    monkeypatch.setattr(os, "ftruncate", real)

    env = envelope()
    await spool.commit(env, b"after")
    with engine.connect() as conn:
        segment = conn.execute(sa.select(tables.messages.c.segment).where(
            tables.messages.c.queue_id == env.queue_id)).scalar_one()
    assert segment == 2


async def test_a_locked_database_delays_the_batch_not_the_loop(
        spool: Spool, tmp_path: Path) -> None:
    await spool.commit(envelope(), b"first")
    # Another process's transaction holds SQLite's write lock.
    other = sqlite3.connect(tmp_path / "postroom.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        env = envelope()
        future = spool.submit(env, b"waits")
        ticks = 0
        deadline = asyncio.get_running_loop().time() + 0.2
        while asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.001)
            ticks += 1
        assert not future.done()
        assert ticks > 50  # the loop kept turning meanwhile
    finally:
        other.execute("ROLLBACK")
        other.close()
    await settle(future)
    assert future.result() is None
    assert spool.read_content(env.queue_id) == b"waits"


async def test_a_database_locked_for_too_long_fails_the_batch(
        spool: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "_BUSY_TIMEOUT", 0.05)
    await spool.commit(envelope(), b"first")
    size = segment_size(spool)
    other = sqlite3.connect(tmp_path / "postroom.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(SpoolError, match="queue database"):
            await asyncio.wait_for(spool.commit(envelope(), b"late"), WAIT)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert segment_size(spool) == size  # cut off, as for any index failure
    await spool.commit(envelope(), b"after")


async def test_a_bug_in_the_pipeline_fails_commits_rather_than_hang(
        spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    loop = asyncio.get_running_loop()
    loop_errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: loop_errors.append(context))
    monkeypatch.setattr(pipeline.CommitPipeline, "_write", broken)
    try:
        waiting = [spool.submit(envelope(), b"x") for _ in range(3)]
        errors = await settle(*waiting)
    finally:
        loop.set_exception_handler(None)
    assert all(isinstance(e, SpoolError) for e in errors)
    assert len(loop_errors) == 1  # the bug is not swallowed
    with pytest.raises(SpoolError, match="spool failed"):
        spool.submit(envelope(), b"x")


# -- Closing -------------------------------------------------------------------


async def test_close_waits_for_the_fsync_in_flight(
        tmp_path: Path, engine: sa.Engine, gate: Gate) -> None:
    s = Spool(tmp_path / "spool", engine)
    await s.start()
    first = s.submit(envelope(), b"first")
    await gate.wait_calls(1)
    second = s.submit(envelope(), b"second")

    closing = asyncio.ensure_future(s.close())
    await asyncio.sleep(0.01)
    assert not closing.done()
    with pytest.raises(SpoolError, match="closing"):
        s.submit(envelope(), b"too late")

    gate.open.set()
    await asyncio.wait_for(closing, WAIT)
    assert await settle(first, second) == [None, None]
    assert s.commit_count == 2

