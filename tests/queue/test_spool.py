"""The spool: durability, group commit, recovery, garbage collection.

Coverage gap, stated plainly: kill -9 (``test_kill_9_loses_no_answered
message``) cannot tell an fsync'd record from one only in the page
cache, because the page cache survives the process. That fdatasync is
called before a commit returns is shown by the counters instead
(``test_group_commit_shares_fsyncs``); a real power cut is not tested.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from postroom.errors import NotFound, SpoolCorrupt, SpoolError
from postroom.ids import new_queue_id
from postroom.queue.envelope import Envelope, Recipient
from postroom.queue.spool import (
    HEADER_SIZE,
    Spool,
    encode_header,
    recover_all,
    segment_name,
    segment_path,
)
from postroom.queue.store import QueueStore
from postroom.store import db
from postroom.store import queue as tables

REPO = Path(__file__).resolve().parents[2]


def envelope(**overrides: object) -> Envelope:
    env = Envelope(
        queue_id=new_queue_id(),
        sender="alice@example.org",
        recipients=[
            Recipient("bob@example.net", notify=("SUCCESS", "FAILURE"),
                      orcpt="rfc822;bob@example.net"),
            Recipient("carol@example.net", notify=()),
            Recipient("dave@example.net"),
        ],
        received_at=1_700_000_000.5,
        body="8BITMIME",
        ret="HDRS",
        envid="QQ314159",
        client_address="192.0.2.1",
    )
    for key, value in overrides.items():
        setattr(env, key, value)
    return env


def content_for(queue_id: str, size: int = 10_240) -> bytes:
    head = f"Subject: {queue_id}\r\nFrom: <alice@example.org>\r\n\r\n".encode()
    body = (queue_id.encode() + b" \xe9t\xe9\r\n") * (size // 20 + 1)
    return head + body[:size]


@pytest.fixture
def engine(tmp_path: Path) -> sa.Engine:
    return db.create_engine(f"sqlite:///{tmp_path / 'postroom.db'}")


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
async def spool(spool_dir: Path, engine: sa.Engine) -> AsyncIterator[Spool]:
    s = Spool(spool_dir, engine)
    await s.start()
    yield s
    await s.close()


async def reopen(spool_dir: Path, engine: sa.Engine, **kwargs: object) -> Spool:
    s = Spool(spool_dir, engine, **kwargs)  # type: ignore[arg-type]
    s.report = await s.start()  # type: ignore[attr-defined]
    return s


def segment_files(spool_dir: Path, name: str = "main") -> list[str]:
    return sorted(p.name for p in (spool_dir / name / "journal").iterdir())


def row_count(engine: sa.Engine, spool: str | None = None) -> int:
    query = sa.select(sa.func.count()).select_from(tables.messages)
    if spool is not None:
        query = query.where(tables.messages.c.spool == spool)
    with engine.connect() as conn:
        return conn.execute(query).scalar_one()


# -- Writing and reading ------------------------------------------------------


async def test_commit_then_read_back_byte_identical(
        spool: Spool, spool_dir: Path, engine: sa.Engine) -> None:
    messages = [
        (envelope(), content_for("x")),
        (envelope(sender=""), b""),
        (envelope(), bytes(range(256)) * 300),  # every byte value, ~77 KB
    ]
    for env, content in messages:
        await spool.commit(env, content)
    assert spool.commit_count == 3

    store = QueueStore(engine, spool_dir)
    for env, content in messages:
        assert spool.read_content(env.queue_id) == content
        assert store.read_content(env.queue_id) == content
        stored, info = store.get(env.queue_id)
        assert stored == env
        assert info.size == len(content)
        assert info.length == HEADER_SIZE + len(env.to_json()) + len(content)

    with pytest.raises(NotFound, match="no message with queue id NOPE"):
        spool.read_content("NOPE")


async def test_record_format_is_documented_layout(
        spool: Spool, spool_dir: Path) -> None:
    env, content = envelope(), b"Subject: hi\r\n\r\nhello\r\n"
    await spool.commit(env, content)

    raw = segment_path(spool_dir, "main", 1).read_bytes()
    env_json = env.to_json()
    assert raw == encode_header(env_json, content) + env_json + content
    assert raw[:4] == b"PRj1"
    assert int.from_bytes(raw[4:8], "big") == len(env_json)
    assert int.from_bytes(raw[8:12], "big") == len(content)


async def test_group_commit_shares_fsyncs(spool: Spool, engine: sa.Engine) -> None:
    # Sequential commits cannot share: one data fsync each at least.
    for _ in range(3):
        await spool.commit(envelope(), b"x")
    assert spool.fsync_count >= 3
    before = spool.fsync_count

    envs = [envelope() for _ in range(200)]
    await asyncio.gather(*(spool.commit(e, content_for(e.queue_id))
                           for e in envs))

    assert spool.commit_count == 203
    assert spool.fsync_count - before <= 200 // 10
    assert row_count(engine) == 203


async def test_concurrent_commits_land_in_the_queue(
        spool: Spool, spool_dir: Path, engine: sa.Engine) -> None:
    envs = [envelope() for _ in range(50)]
    await asyncio.gather(*(spool.commit(e, content_for(e.queue_id, 100 + i))
                           for i, e in enumerate(envs)))
    store = QueueStore(engine, spool_dir)
    listed = {info.queue_id for info in store.list_messages()}
    assert listed == {e.queue_id for e in envs}
    for i, e in enumerate(envs):
        assert store.read_content(e.queue_id) == content_for(e.queue_id, 100 + i)


async def test_segments_rotate_past_segment_size(
        spool_dir: Path, engine: sa.Engine) -> None:
    s = await reopen(spool_dir, engine, segment_size=30_000)
    envs = [envelope() for _ in range(6)]
    for e in envs:
        await s.commit(e, content_for(e.queue_id))
    await s.close()

    # Records are ~10.7 KB with header and envelope: two fit in 30,000
    # bytes, so six make three segments.
    assert segment_files(spool_dir) == [segment_name(n) for n in (1, 2, 3)]
    s = await reopen(spool_dir, engine, segment_size=30_000)
    for e in envs:
        assert s.read_content(e.queue_id) == content_for(e.queue_id)
    await s.close()


async def test_read_detects_a_corrupt_record(
        spool: Spool, spool_dir: Path) -> None:
    envs = [envelope() for _ in range(3)]
    for e in envs:
        await spool.commit(e, content_for(e.queue_id))

    path = segment_path(spool_dir, "main", 1)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # inside the middle record's content
    path.write_bytes(bytes(raw))

    with pytest.raises(SpoolCorrupt, match="checksum"):
        spool.read_content(envs[1].queue_id)
    assert spool.read_content(envs[0].queue_id) == content_for(envs[0].queue_id)
    assert spool.read_content(envs[2].queue_id) == content_for(envs[2].queue_id)


async def test_commit_fails_cleanly_when_fsync_fails(
        spool_dir: Path, engine: sa.Engine,
        monkeypatch: pytest.MonkeyPatch) -> None:
    s = await reopen(spool_dir, engine)
    good = envelope()
    await s.commit(good, b"one")

    real = os.fdatasync
    calls: list[int] = []

    def failing(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 1:
            raise OSError(5, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fdatasync", failing)
    failed = envelope()
    with pytest.raises(SpoolError, match="Input/output error"):
        await s.commit(failed, b"two")
    monkeypatch.undo()

    # The spool carries on, in a new segment.
    after = envelope()
    await s.commit(after, b"three")
    await s.close()

    # The message answered with an error must not come back.
    s = await reopen(spool_dir, engine)
    assert s.report.reinserted == 0  # type: ignore[attr-defined]
    assert s.read_content(good.queue_id) == b"one"
    assert s.read_content(after.queue_id) == b"three"
    with pytest.raises(NotFound):
        s.read_content(failed.queue_id)
    await s.close()


async def test_index_failure_cuts_the_batch_off(
        spool: Spool, spool_dir: Path, engine: sa.Engine) -> None:
    env = envelope()
    await spool.commit(env, b"first")
    size = segment_path(spool_dir, "main", 1).stat().st_size

    duplicate = envelope(queue_id=env.queue_id)
    with pytest.raises(SpoolError, match="queue database"):
        await spool.commit(duplicate, b"second")
    assert segment_path(spool_dir, "main", 1).stat().st_size == size

    other = envelope()
    await spool.commit(other, b"third")
    assert spool.read_content(env.queue_id) == b"first"
    assert spool.read_content(other.queue_id) == b"third"


async def test_commit_outside_start_and_close_fails(
        spool_dir: Path, engine: sa.Engine) -> None:
    s = Spool(spool_dir, engine)
    with pytest.raises(SpoolError, match="not running"):
        await s.commit(envelope(), b"x")
    await s.start()
    await s.close()
    with pytest.raises(SpoolError, match="not running"):
        await s.commit(envelope(), b"x")


async def test_close_finishes_pending_commits(
        spool_dir: Path, engine: sa.Engine) -> None:
    s = await reopen(spool_dir, engine)
    envs = [envelope() for _ in range(20)]
    tasks = [asyncio.ensure_future(s.commit(e, b"x")) for e in envs]
    await asyncio.sleep(0)  # every commit is queued, few are written
    await s.close()
    await asyncio.gather(*tasks)
    assert row_count(engine) == 20


# -- The lock ------------------------------------------------------------------


async def test_lock_prevents_a_second_spool(
        spool: Spool, spool_dir: Path, engine: sa.Engine) -> None:
    other = Spool(spool_dir, engine)
    owner = rf"in use by another process \(pid {os.getpid()}\)"
    with pytest.raises(SpoolError, match=owner):
        await other.start()

    await spool.close()
    again = await reopen(spool_dir, engine)
    await again.close()


# -- Recovery ------------------------------------------------------------------


def torn_tail(kind: str) -> bytes:
    env = envelope().to_json()
    content = b"lost in the crash\r\n" * 100
    record = encode_header(env, content) + env + content
    if kind == "half header":
        return record[: HEADER_SIZE // 2]
    if kind == "partial payload":
        return record[: len(record) - 7]
    if kind == "bad crc":
        return record[:-1] + bytes([record[-1] ^ 0xFF])
    return b"\0" * 4096  # "zeros": size extended, data never written


@pytest.mark.parametrize(
    "kind", ["half header", "partial payload", "bad crc", "zeros"])
async def test_torn_tail_is_truncated_and_segment_still_appendable(
        spool_dir: Path, engine: sa.Engine, kind: str,
        caplog: pytest.LogCaptureFixture) -> None:
    s = await reopen(spool_dir, engine)
    envs = [envelope(), envelope()]
    for e in envs:
        await s.commit(e, content_for(e.queue_id))
    await s.close()
    path = segment_path(spool_dir, "main", 1)
    good_size = path.stat().st_size
    tail = torn_tail(kind)
    with open(path, "ab") as f:
        f.write(tail)

    caplog.set_level(logging.INFO, logger="postroom.queue")
    s = await reopen(spool_dir, engine)
    assert s.report.truncated == 1  # type: ignore[attr-defined]
    assert s.report.truncated_bytes == len(tail)  # type: ignore[attr-defined]
    assert s.report.records == 2  # type: ignore[attr-defined]
    assert path.stat().st_size == good_size
    assert (f"recovered action=truncate spool=main segment={segment_name(1)}"
            f" offset={good_size} discarded={len(tail)}") in caplog.text

    # The next record goes right after the last good one, same segment.
    late = envelope()
    await s.commit(late, b"after the crash")
    await s.close()
    assert segment_files(spool_dir) == [segment_name(1)]
    with engine.connect() as conn:
        offset = conn.execute(sa.select(tables.messages.c.offset).where(
            tables.messages.c.queue_id == late.queue_id)).scalar_one()
    assert offset == good_size

    s = await reopen(spool_dir, engine)
    assert s.report.truncated == 0  # type: ignore[attr-defined]
    assert s.report.records == 3  # type: ignore[attr-defined]
    for e in envs:
        assert s.read_content(e.queue_id) == content_for(e.queue_id)
    assert s.read_content(late.queue_id) == b"after the crash"
    await s.close()


async def test_recovery_reinserts_rows_lost_by_the_database(
        spool_dir: Path, engine: sa.Engine,
        caplog: pytest.LogCaptureFixture) -> None:
    s = await reopen(spool_dir, engine)
    envs = [envelope() for _ in range(5)]
    for e in envs:
        await s.commit(e, content_for(e.queue_id))
    await s.close()

    # What a power loss does to SQLite's last transactions (synchronous=
    # NORMAL): the rows are gone, the fsync'd journal is not.
    lost = [envs[1].queue_id, envs[4].queue_id]
    with engine.begin() as conn:
        conn.execute(tables.recipients.delete().where(
            tables.recipients.c.queue_id.in_(lost)))
        conn.execute(tables.messages.delete().where(
            tables.messages.c.queue_id.in_(lost)))

    caplog.set_level(logging.INFO, logger="postroom.queue")
    s = await reopen(spool_dir, engine)
    assert s.report.reinserted == 2  # type: ignore[attr-defined]
    assert s.report.records == 5  # type: ignore[attr-defined]
    store = QueueStore(engine, spool_dir)
    for e in envs:
        stored, _ = store.get(e.queue_id)
        assert stored == e
        assert store.read_content(e.queue_id) == content_for(e.queue_id)
    for queue_id in lost:
        assert (f"{queue_id}: recovered spool=main segment={segment_name(1)}"
                in caplog.text)
    assert ("recovered spool=main segments=1 records=5 reinserted=2"
            in caplog.text)
    await s.close()

    s = await reopen(spool_dir, engine)
    assert s.report.reinserted == 0  # type: ignore[attr-defined]
    await s.close()


async def test_rows_whose_segment_is_gone_are_dropped(
        spool_dir: Path, engine: sa.Engine,
        caplog: pytest.LogCaptureFixture) -> None:
    s = await reopen(spool_dir, engine, segment_size=1)  # a segment each
    envs = [envelope() for _ in range(3)]
    for e in envs:
        await s.commit(e, b"x")
    await s.close()
    segment_path(spool_dir, "main", 2).unlink()

    caplog.set_level(logging.WARNING, logger="postroom.queue")
    s = await reopen(spool_dir, engine, segment_size=1)
    assert s.report.dropped == 1  # type: ignore[attr-defined]
    assert (f"{envs[1].queue_id}: removed reason=\"segment file missing\""
            f" spool=main segment={segment_name(2)}") in caplog.text
    with pytest.raises(NotFound):
        s.read_content(envs[1].queue_id)
    assert s.read_content(envs[0].queue_id) == b"x"
    assert s.read_content(envs[2].queue_id) == b"x"
    assert row_count(engine) == 2
    await s.close()


async def test_unreadable_record_inside_a_segment_is_held(
        spool_dir: Path, engine: sa.Engine) -> None:
    s = await reopen(spool_dir, engine)
    envs = [envelope() for _ in range(3)]
    for e in envs:
        await s.commit(e, content_for(e.queue_id))
    await s.close()
    path = segment_path(spool_dir, "main", 1)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))

    s = await reopen(spool_dir, engine)
    # Not a torn tail (good records follow): nothing is truncated.
    assert s.report.truncated == 0  # type: ignore[attr-defined]
    assert s.report.corrupt == 2  # type: ignore[attr-defined]  # record + row
    assert path.stat().st_size == len(raw)
    states = {i.queue_id: i.state
              for i in QueueStore(engine, spool_dir).list_messages()}
    assert states == {envs[0].queue_id: "queued", envs[1].queue_id: "held",
                      envs[2].queue_id: "queued"}
    await s.close()


# -- Garbage collection --------------------------------------------------------


async def test_gc_unlinks_fully_removed_segments(
        spool_dir: Path, engine: sa.Engine) -> None:
    s = await reopen(spool_dir, engine, segment_size=1)  # a segment each
    envs = [envelope() for _ in range(4)]
    for e in envs:
        await s.commit(e, b"x")
    assert segment_files(spool_dir) == [segment_name(n) for n in (1, 2, 3, 4)]
    # Also waits out the collection the last rotation started, so that
    # the counts below are this call's alone.
    assert await s.collect_garbage() == 0
    store = QueueStore(engine, spool_dir)

    store.delete([envs[0].queue_id, envs[1].queue_id])
    assert await s.collect_garbage() == 2
    assert segment_files(spool_dir) == [segment_name(3), segment_name(4)]
    assert row_count(engine) == 2  # the removed rows went with their files

    # The active segment is kept even when all it holds is removed.
    store.delete([envs[3].queue_id])
    assert await s.collect_garbage() == 0
    assert segment_files(spool_dir) == [segment_name(3), segment_name(4)]
    await s.close()

    # At start: segment 4 is full (segment_size=1), so not reused, and
    # segment 3 goes once its message is removed.
    store.delete([envs[2].queue_id])
    s = await reopen(spool_dir, engine, segment_size=1)
    assert s.report.collected == 2  # type: ignore[attr-defined]
    assert segment_files(spool_dir) == []
    assert row_count(engine) == 0

    # Numbers are never reused, so stale rows cannot alias a new file.
    e = envelope()
    await s.commit(e, b"y")
    assert segment_files(spool_dir) == [segment_name(5)]
    await s.close()


async def test_gc_runs_at_rotation(spool_dir: Path, engine: sa.Engine) -> None:
    s = await reopen(spool_dir, engine, segment_size=1)
    first, second = envelope(), envelope()
    await s.commit(first, b"x")
    QueueStore(engine, spool_dir).delete([first.queue_id])
    await s.commit(second, b"y")  # rotates away from segment 1
    await s.close()  # waits for the pipeline, hence for its collection
    assert segment_files(spool_dir) == [segment_name(2)]


async def test_partly_removed_segment_is_kept(
        spool: Spool, spool_dir: Path, engine: sa.Engine) -> None:
    envs = [envelope() for _ in range(2)]
    for e in envs:
        await spool.commit(e, b"x")
    QueueStore(engine, spool_dir).delete([envs[0].queue_id])
    assert await spool.collect_garbage() == 0
    assert spool.read_content(envs[1].queue_id) == b"x"


# -- Several spools on one database --------------------------------------------
#
# One spool per worker process, all on one database and one spool_dir.
# Their segment numbers collide on purpose (each starts at 1): a query
# keyed by segment number alone would mix them up.


@pytest.mark.parametrize("name", [
    "", "Main", "w_0", "a/b", "..", ".hidden", "-w0", "w0 ", "é", "x" * 33])
def test_bad_spool_names_are_refused(
        spool_dir: Path, engine: sa.Engine, name: str) -> None:
    with pytest.raises(ValueError, match="bad spool name"):
        Spool(spool_dir, engine, name=name)


async def test_a_spool_lives_in_its_own_directory(
        spool_dir: Path, engine: sa.Engine) -> None:
    s = await reopen(spool_dir, engine, name="node2-w13")
    await s.commit(envelope(), b"x")
    await s.close()
    assert sorted(p.name for p in spool_dir.iterdir()) == ["node2-w13"]
    assert sorted(p.name for p in (spool_dir / "node2-w13").iterdir()) == [
        "journal", "spool.lock"]
    assert segment_files(spool_dir, "node2-w13") == [segment_name(1)]


async def test_two_spools_commit_concurrently(
        spool_dir: Path, engine: sa.Engine) -> None:
    w0 = await reopen(spool_dir, engine, name="w0")
    w1 = await reopen(spool_dir, engine, name="w1")
    sent = [(s, envelope()) for _ in range(50) for s in (w0, w1)]
    await asyncio.gather(*(s.commit(e, content_for(e.queue_id, 300))
                           for s, e in sent))

    store = QueueStore(engine, spool_dir)
    infos = {i.queue_id: i for i in store.list_messages()}
    assert len(infos) == 100
    for s, e in sent:
        assert infos[e.queue_id].spool == s.name
        assert infos[e.queue_id].segment == 1  # the same number in both
        assert store.read_content(e.queue_id) == content_for(e.queue_id, 300)
    assert segment_files(spool_dir, "w0") == segment_files(spool_dir, "w1")
    await w0.close()
    await w1.close()


async def test_each_spool_recovers_only_its_own_rows(
        spool_dir: Path, engine: sa.Engine) -> None:
    names = ("w0", "w1")
    envs = {name: [envelope() for _ in range(n)]
            for name, n in zip(names, (3, 4), strict=True)}
    for name in names:  # a record per segment: 1-3 in w0, 1-4 in w1
        s = await reopen(spool_dir, engine, name=name, segment_size=1)
        for e in envs[name]:
            await s.commit(e, name.encode())
        await s.close()

    # w0 lost a row (power loss); w1 lost a segment file, of a number
    # w0 has never used.
    lost = envs["w0"][1].queue_id
    with engine.begin() as conn:
        conn.execute(tables.recipients.delete().where(
            tables.recipients.c.queue_id == lost))
        conn.execute(tables.messages.delete().where(
            tables.messages.c.queue_id == lost))
    segment_path(spool_dir, "w1", 4).unlink()

    # w0 re-creates its row although w1 has one at the same segment and
    # offset, and leaves w1's row without a file alone.
    s = await reopen(spool_dir, engine, name="w0", segment_size=1)
    report = s.report  # type: ignore[attr-defined]
    assert (report.reinserted, report.dropped) == (1, 0)
    await s.close()
    assert row_count(engine, "w1") == 4

    s = await reopen(spool_dir, engine, name="w1", segment_size=1)
    report = s.report  # type: ignore[attr-defined]
    assert (report.reinserted, report.dropped) == (0, 1)
    await s.close()

    store = QueueStore(engine, spool_dir)
    assert {i.queue_id: i.spool for i in store.list_messages()} == {
        e.queue_id: name for name in names for e in envs[name]
        if e is not envs["w1"][3]}
    for e in envs["w0"]:
        assert store.read_content(e.queue_id) == b"w0"


async def test_gc_of_one_spool_never_touches_the_other(
        spool_dir: Path, engine: sa.Engine) -> None:
    w0 = await reopen(spool_dir, engine, name="w0", segment_size=1)
    w1 = await reopen(spool_dir, engine, name="w1", segment_size=1)
    envs = {s.name: [envelope() for _ in range(3)] for s in (w0, w1)}
    for s in (w0, w1):
        for e in envs[s.name]:
            await s.commit(e, b"x")
        assert await s.collect_garbage() == 0  # the rotations' runs
    store = QueueStore(engine, spool_dir)
    all_three = [segment_name(n) for n in (1, 2, 3)]

    # w1's messages are all removed and w0's are not, in segments with
    # the same numbers: each spool judges only its own rows.
    store.delete(e.queue_id for e in envs["w1"])
    assert await w0.collect_garbage() == 0
    assert await w1.collect_garbage() == 2  # all but the active one
    assert segment_files(spool_dir, "w0") == all_three
    assert segment_files(spool_dir, "w1") == [segment_name(3)]
    assert row_count(engine, "w0") == 3
    assert row_count(engine, "w1") == 1
    for e in envs["w0"]:
        assert store.read_content(e.queue_id) == b"x"

    store.delete([envs["w0"][0].queue_id])
    assert await w0.collect_garbage() == 1
    assert segment_files(spool_dir, "w0") == all_three[1:]
    assert row_count(engine, "w1") == 1
    await w0.close()
    await w1.close()


async def test_recover_all_recovers_an_orphaned_spool(
        spool_dir: Path, engine: sa.Engine,
        caplog: pytest.LogCaptureFixture) -> None:
    # w1 ran under an earlier configuration with two workers and crashed
    # with a torn tail and a lost row; now only w0 runs.
    w1 = await reopen(spool_dir, engine, name="w1")
    orphans = [envelope() for _ in range(3)]
    for e in orphans:
        await w1.commit(e, content_for(e.queue_id))
    await w1.close()
    with open(segment_path(spool_dir, "w1", 1), "ab") as f:
        f.write(torn_tail("partial payload"))
    with engine.begin() as conn:
        conn.execute(tables.messages.delete().where(
            tables.messages.c.queue_id == orphans[2].queue_id))
    (spool_dir / "Not-A-Spool").mkdir()  # neither of these is touched
    (spool_dir / "notes.txt").write_text("hi")

    w0 = await reopen(spool_dir, engine, name="w0")
    await w0.commit(envelope(), b"w0's")
    caplog.set_level(logging.INFO, logger="postroom.queue")
    reports = await recover_all(spool_dir, engine)

    # w0 has a live owner and is skipped; w1 is mended.
    assert list(reports) == ["w1"]
    assert (reports["w1"].truncated, reports["w1"].reinserted) == (1, 1)
    assert (f"recovered spool=w0 action=skip reason=\"in use by pid"
            f" {os.getpid()}\"") in caplog.text
    store = QueueStore(engine, spool_dir)
    for e in orphans:
        assert store.read_content(e.queue_id) == content_for(e.queue_id)

    # Deleted, its messages go for good at the next run: with no owner
    # to append to it, even the last segment is collected.
    store.delete(e.queue_id for e in orphans)
    reports = await recover_all(spool_dir, engine)
    assert reports["w1"].collected == 1
    assert segment_files(spool_dir, "w1") == []
    assert row_count(engine, "w1") == 0
    assert row_count(engine, "w0") == 1
    assert (spool_dir / "notes.txt").read_text() == "hi"

    # The spool's lock was let go: a worker may take the name up again.
    again = await reopen(spool_dir, engine, name="w1")
    await again.close()
    await w0.close()


async def test_recover_all_without_a_spool_dir(
        tmp_path: Path, engine: sa.Engine) -> None:
    assert await recover_all(tmp_path / "nowhere", engine) == {}


async def test_a_row_naming_a_bad_spool_is_not_followed(
        spool: Spool, engine: sa.Engine, spool_dir: Path) -> None:
    env = envelope()
    await spool.commit(env, b"x")
    with engine.begin() as conn:
        conn.execute(tables.messages.update().values(spool="../main"))
    with pytest.raises(SpoolCorrupt, match="bad spool"):
        QueueStore(engine, spool_dir).read_content(env.queue_id)


# -- The spool's database connections -----------------------------------------


async def test_spool_keeps_its_connections(
        spool_dir: Path, engine: sa.Engine) -> None:
    # Both connections (the index's, on the loop, and the maintenance
    # one, for recovery and collection) are opened at start and kept.
    s = await reopen(spool_dir, engine)
    checkouts: list[object] = []
    sa.event.listen(engine, "checkout", lambda *args: checkouts.append(args))
    for _ in range(5):  # a batch each, and a collection between
        await s.commit(envelope(), b"x")
        await s.collect_garbage()
    assert checkouts == []

    # A failed batch rolls back and costs one fresh connection.
    taken = envelope()
    await s.commit(taken, b"x")
    with pytest.raises(SpoolError, match="queue database"):
        await s.commit(envelope(queue_id=taken.queue_id), b"y")
    await s.commit(envelope(), b"z")
    assert len(checkouts) == 1
    assert row_count(engine) == 7

    await s.close()
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


# -- Crash ---------------------------------------------------------------------

CHILD = """
import asyncio, sys
from pathlib import Path
from postroom.ids import new_queue_id
from postroom.queue.envelope import Envelope, Recipient
from postroom.queue.spool import Spool
from postroom.store import db

def content_for(queue_id):
    return queue_id.encode() * 800

async def main():
    spool = Spool(Path(sys.argv[1]), db.create_engine(sys.argv[2]))
    await spool.start()

    async def session():
        while True:
            queue_id = new_queue_id()
            env = Envelope(queue_id, "a@example.org",
                           [Recipient("b@example.net")])
            await spool.commit(env, content_for(queue_id))
            # Only now may the server answer 250.
            sys.stdout.write(queue_id + "\\n")
            sys.stdout.flush()

    await asyncio.gather(*(session() for _ in range(16)))

asyncio.run(main())
"""


def child_content(queue_id: str) -> bytes:
    return queue_id.encode() * 800


def run_and_kill(spool_dir: Path, url: str, answered: int) -> list[str]:
    """Run CHILD until it has *answered* commits, kill -9 it, return the
    queue ids it printed (complete lines only)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(spool_dir), url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    lines: list[bytes] = []
    deadline = time.monotonic() + 20
    try:
        while len(lines) < answered and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                pytest.fail(f"child died: {proc.stderr.read().decode()}")
            lines.append(line)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        rest = proc.stdout.read()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    lines += rest.splitlines(keepends=True)
    return [line.decode().strip() for line in lines if line.endswith(b"\n")]


async def test_kill_9_loses_no_answered_message(
        spool_dir: Path, engine: sa.Engine, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'postroom.db'}"
    answered: list[str] = []
    for _ in range(2):  # crash, recover, crash again on the mended spool
        answered += await asyncio.to_thread(
            run_and_kill, spool_dir, url, 150)

        s = await reopen(spool_dir, engine)
        store = QueueStore(engine, spool_dir)
        for queue_id in answered:
            assert store.read_content(queue_id) == child_content(queue_id)
        # Still appendable after whatever the kill left behind.
        e = envelope()
        await s.commit(e, b"after")
        assert s.read_content(e.queue_id) == b"after"
        await s.close()
    assert len(set(answered)) >= 300
