"""QueueStore: what the CLI and the API see of the queue.

Messages are put in through a running Spool, and the store reads them
through its own engine, as a separate process (the CLI) would.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from postroom.errors import NotFound
from postroom.ids import new_queue_id
from postroom.queue.envelope import Envelope, Recipient
from postroom.queue.spool import Spool
from postroom.queue.store import QueueStore
from postroom.store import db
from postroom.store import queue as tables


def envelope(received_at: float, *recipients: Recipient) -> Envelope:
    return Envelope(
        queue_id=new_queue_id(), sender="alice@example.org",
        recipients=list(recipients) or [Recipient("bob@example.net")],
        received_at=received_at, envid="E1", ret="FULL")


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'postroom.db'}"


@pytest.fixture
async def spool(tmp_path: Path, url: str) -> AsyncIterator[Spool]:
    s = Spool(tmp_path / "spool", db.create_engine(url), segment_size=1)
    await s.start()
    yield s
    await s.close()


@pytest.fixture
def store(tmp_path: Path, url: str) -> QueueStore:
    # A second engine: another connection pool, as the CLI process has.
    return QueueStore(db.create_engine(url), tmp_path / "spool")


async def test_list_in_arrival_order_with_recipient_states(
        spool: Spool, store: QueueStore) -> None:
    late = envelope(2000.0, Recipient("x@example.net"))
    early = envelope(1000.0,
                     Recipient("b@example.net", notify=("SUCCESS", "DELAY"),
                               orcpt="rfc822;b@example.net"),
                     Recipient("c@example.net", notify=()),
                     Recipient("d@example.net"))
    await spool.commit(late, b"late")
    await spool.commit(early, b"early!")

    infos = store.list_messages()
    assert [i.queue_id for i in infos] == [early.queue_id, late.queue_id]
    first = infos[0]
    assert (first.sender, first.size, first.state, first.received_at) == (
        "alice@example.org", 6, "queued", 1000.0)
    assert [r.plain() for r in first.recipients] == early.recipients
    assert [r.notify for r in first.recipients] == [("SUCCESS", "DELAY"), (), None]


async def test_empty_queue(store: QueueStore) -> None:
    assert store.list_messages() == []


async def test_get_returns_envelope_with_current_recipient_states(
        spool: Spool, store: QueueStore, url: str) -> None:
    env = envelope(1.0, Recipient("b@example.net"), Recipient("c@example.net"))
    await spool.commit(env, b"Subject: x\r\n\r\nbody\r\n")

    # The delivery engine records progress in the recipients table.
    with db.create_engine(url).begin() as conn:
        conn.execute(tables.recipients.update().where(
            tables.recipients.c.queue_id == env.queue_id,
            tables.recipients.c.idx == 1).values(state="deferred"))

    stored, info = store.get(env.queue_id)
    assert [r.state for r in stored.recipients] == ["queued", "deferred"]
    assert stored.envid == "E1" and stored.ret == "FULL"
    assert [r.plain() for r in info.recipients] == stored.recipients
    assert store.read_content(env.queue_id) == b"Subject: x\r\n\r\nbody\r\n"


async def test_unknown_id_is_not_found(store: QueueStore) -> None:
    with pytest.raises(NotFound, match=r"^no message with queue id 0NOPE$"):
        store.get("0NOPE")
    with pytest.raises(NotFound, match=r"^no message with queue id 0NOPE$"):
        store.read_content("0NOPE")
    with pytest.raises(NotFound, match=r"^no message with queue id 0NOPE$"):
        store.delete(["0NOPE"])


async def test_delete_marks_removed_and_logs(
        spool: Spool, store: QueueStore,
        caplog: pytest.LogCaptureFixture) -> None:
    envs = [envelope(float(n)) for n in range(3)]
    for e in envs:
        await spool.commit(e, b"x")

    caplog.set_level(logging.INFO, logger="postroom.queue.store")
    assert store.delete([envs[0].queue_id, envs[0].queue_id]) == 1
    assert f"{envs[0].queue_id}: removed reason=admin" in caplog.text
    assert [i.queue_id for i in store.list_messages()] == [
        envs[1].queue_id, envs[2].queue_id]
    with pytest.raises(NotFound):
        store.get(envs[0].queue_id)
    with pytest.raises(NotFound):
        store.read_content(envs[0].queue_id)
    with pytest.raises(NotFound):
        store.delete([envs[0].queue_id])  # already removed


async def test_delete_is_all_or_nothing(spool: Spool, store: QueueStore) -> None:
    env = envelope(1.0)
    await spool.commit(env, b"x")
    with pytest.raises(NotFound, match="0NOPE"):
        store.delete([env.queue_id, "0NOPE"])
    assert [i.queue_id for i in store.list_messages()] == [env.queue_id]


async def test_delete_all(spool: Spool, store: QueueStore) -> None:
    for n in range(3):
        await spool.commit(envelope(float(n)), b"x")
    assert store.delete_all() == 3
    assert store.list_messages() == []
    assert store.delete_all() == 0


async def test_delete_while_the_spool_runs_then_gc(
        spool: Spool, store: QueueStore, tmp_path: Path, url: str) -> None:
    envs = [envelope(float(n)) for n in range(3)]
    for e in envs:
        await spool.commit(e, b"x")
    # Wait out the collection the last rotation started (none to do).
    assert await spool.collect_garbage() == 0

    store.delete([envs[0].queue_id])
    # Still on disk until the owner collects; then gone with its rows.
    assert len(list((tmp_path / "spool" / "main" / "journal").iterdir())) == 3
    assert await spool.collect_garbage() == 1
    assert len(list((tmp_path / "spool" / "main" / "journal").iterdir())) == 2

    # The spool keeps committing after an outside delete.
    more = envelope(9.0)
    await spool.commit(more, b"y")
    assert store.read_content(more.queue_id) == b"y"
    with db.create_engine(url).connect() as conn:
        ids = set(conn.execute(sa.select(tables.messages.c.queue_id)).scalars())
    assert envs[0].queue_id not in ids


async def test_reads_and_deletes_across_spools(
        spool: Spool, store: QueueStore, tmp_path: Path, url: str) -> None:
    # A second worker's spool on the same database and spool_dir; both
    # write segment 1 first, so only the spool tells their records apart.
    other = Spool(tmp_path / "spool", db.create_engine(url), name="w1",
                  segment_size=1)
    await other.start()
    mine, theirs = envelope(1.0), envelope(2.0)
    await spool.commit(mine, b"main's")
    await other.commit(theirs, b"w1's")

    infos = store.list_messages()
    assert [(i.queue_id, i.spool, i.segment) for i in infos] == [
        (mine.queue_id, "main", 1), (theirs.queue_id, "w1", 1)]
    assert store.get(theirs.queue_id)[1].spool == "w1"
    assert store.read_content(mine.queue_id) == b"main's"
    assert store.read_content(theirs.queue_id) == b"w1's"

    assert store.delete([mine.queue_id, theirs.queue_id]) == 2
    assert store.list_messages() == []
    # Each owner collects its own segment 1 when it rotates away from it
    # (collect_garbage waits for that run).
    for s in (spool, other):
        await s.commit(envelope(3.0), b"x")
        await s.collect_garbage()
        assert [p.name for p in s.journal_dir.iterdir()] == ["00000002.seg"]
    await other.close()
