"""The webhook sender against a loopback HTTP server the test starts:
batches, signatures, retries with backoff, giving up, kinds, replays.
Time is a fake clock; the sender's rounds are run one by one."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from postroom import events
from postroom.config import WebhooksConfig
from postroom.store import db
from postroom.store.webhooks import webhooks as webhook_table
from postroom.testing.clock import FakeClock
from postroom.testing.webhooks import WebhookReceiver
from postroom.webhooks import endpoints, signing
from postroom.webhooks.sender import WebhookSender

T0 = 1_800_000_000.0


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    made = db.create_engine(f"sqlite:///{tmp_path / 'p.db'}")
    yield made
    made.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as started:
        yield started


@pytest.fixture
async def sender(engine: sa.Engine, clock: FakeClock) -> AsyncIterator[WebhookSender]:
    config = WebhooksConfig(
        batch_size=3, retry_first=10, retry_max=25, give_up_after=100
    )
    made = WebhookSender(config, engine, clock=clock.time)
    yield made
    await made.stop()


def emit(engine: sa.Engine, *items: tuple[events.Kind, str, float]) -> None:
    meta = events.Meta("REQ1", '["invite"]', '{"user":"42","event":"no"}', "c7")
    with engine.begin() as conn:
        events.record(
            conn,
            [
                events.row(kind, when, meta, "QID", i, rcpt, response="250 ok")
                for i, (kind, rcpt, when) in enumerate(items)
            ],
        )


def add_hook(engine: sa.Engine, url: str, **kw: object) -> endpoints.Endpoint:
    with engine.begin() as conn:
        return endpoints.create(conn, url, **kw)  # type: ignore[arg-type]


def hook_row(engine: sa.Engine, hook_id: int) -> sa.Row[object]:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(webhook_table).where(webhook_table.c.id == hook_id)
        ).one()


async def test_posts_new_events_signed_in_sendgrid_shape(
    engine: sa.Engine, clock: FakeClock, receiver: WebhookReceiver,
    sender: WebhookSender,
) -> None:
    emit(engine, (events.Kind.PROCESSED, "old@example.net", T0 - 5))
    hook = add_hook(engine, receiver.url)  # starts after the old event
    emit(engine, (events.Kind.DELIVERED, "Ann@Example.net", T0))

    await sender.run_once()

    [post] = receiver.posts
    stamp = post.headers[signing.TIMESTAMP_HEADER]
    assert signing.verify(
        hook.secret, stamp, post.body, post.headers[signing.SIGNATURE_HEADER],
        now=clock.time(),
    )
    [event] = post.events()
    assert event["email"] == "ann@example.net"
    assert event["event"] == "delivered"
    assert event["timestamp"] == int(T0)
    assert event["sg_message_id"] == "REQ1.QID.0"
    assert event["sg_event_id"].startswith("pr")
    assert event["category"] == ["invite"]
    assert event["response"] == "250 ok"
    # custom_args at the top level, never over an event field.
    assert event["user"] == "42" and event["event"] == "delivered"

    await sender.run_once()
    assert len(receiver.posts) == 1  # nothing new, nothing posted


async def test_batches_of_at_most_batch_size(
    engine: sa.Engine, receiver: WebhookReceiver, sender: WebhookSender
) -> None:
    add_hook(engine, receiver.url)
    emit(engine, *[(events.Kind.PROCESSED, f"r{i}@example.net", T0) for i in range(7)])
    assert await sender.run_once()  # a full batch: more may wait
    assert await sender.run_once()
    assert not await sender.run_once()
    assert [len(p.events()) for p in receiver.posts] == [3, 3, 1]
    assert len({e["sg_event_id"] for e in receiver.accepted()}) == 7


async def test_failures_retry_with_doubling_capped_backoff(
    engine: sa.Engine, clock: FakeClock, sender: WebhookSender
) -> None:
    with WebhookReceiver(fail_first=[500, 503, 502, 500]) as receiver:
        hook = add_hook(engine, receiver.url)
        emit(engine, (events.Kind.BOUNCE, "x@example.net", T0))

        delays = []
        for _ in range(4):
            await sender.run_once()
            row = hook_row(engine, hook.id)
            delays.append(row.next_try - clock.time())  # type: ignore[attr-defined]
            await sender.run_once()  # not due yet: no post
            clock.advance(row.next_try - clock.time())  # type: ignore[attr-defined]
        assert delays == [10, 20, 25, 25]
        assert len(receiver.posts) == 4
        assert hook_row(engine, hook.id).last_error == "HTTP 500"  # type: ignore[attr-defined]

        await sender.run_once()
        assert [p.status for p in receiver.posts] == [500, 503, 502, 500, 200]
        # The same event each time (at-least-once), then the cursor moves.
        assert len({p.body.split(b'"sg_event_id"')[1] for p in receiver.posts}) == 1
        row = hook_row(engine, hook.id)
        assert row.failures == 0 and row.last_error is None  # type: ignore[attr-defined]


async def test_a_refused_connection_is_a_failure_too(
    engine: sa.Engine, clock: FakeClock, sender: WebhookSender
) -> None:
    with WebhookReceiver() as receiver:
        url = receiver.url
    hook = add_hook(engine, url)  # nobody listens there any more
    emit(engine, (events.Kind.DELIVERED, "a@example.net", T0))
    await sender.run_once()
    row = hook_row(engine, hook.id)
    assert row.failures == 1 and "Connect" in row.last_error  # type: ignore[attr-defined]


async def test_gives_up_on_a_batch_after_give_up_after(
    engine: sa.Engine, clock: FakeClock, sender: WebhookSender
) -> None:
    with WebhookReceiver(fail_first=[500] * 20) as receiver:
        hook = add_hook(engine, receiver.url)
        emit(engine, (events.Kind.DELIVERED, "a@example.net", T0))
        while hook_row(engine, hook.id).cursor == hook.cursor:  # type: ignore[attr-defined]
            await sender.run_once()
            clock.advance(25)
            assert clock.time() < T0 + 200
        # Failing since T0 (posts at +0, +25, +50, +75), given up at +100
        # when the fifth post failed too.
        assert len(receiver.posts) == 5
        assert hook_row(engine, hook.id).failures == 0  # type: ignore[attr-defined]


async def test_kinds_filter_and_cursor_skips_the_rest(
    engine: sa.Engine, receiver: WebhookReceiver, sender: WebhookSender
) -> None:
    hook = add_hook(engine, receiver.url, kinds=["bounce"])
    emit(
        engine,
        (events.Kind.PROCESSED, "a@example.net", T0),
        (events.Kind.BOUNCE, "b@example.net", T0),
        (events.Kind.DELIVERED, "c@example.net", T0),
    )
    await sender.run_once()
    assert [e["email"] for e in receiver.accepted()] == ["b@example.net"]
    with engine.connect() as conn:
        newest = events.last_id(conn)
    assert hook_row(engine, hook.id).cursor == newest  # type: ignore[attr-defined]


async def test_replay_posts_a_time_range_again_then_ends(
    engine: sa.Engine, receiver: WebhookReceiver, sender: WebhookSender
) -> None:
    hook = add_hook(engine, receiver.url)
    emit(
        engine,
        (events.Kind.PROCESSED, "early@example.net", T0 - 100),
        (events.Kind.DELIVERED, "in1@example.net", T0),
        (events.Kind.DELIVERED, "in2@example.net", T0 + 10),
        (events.Kind.OPEN, "late@example.net", T0 + 100),
    )
    await sender.run_once()
    await sender.run_once()  # two batches of at most three
    assert len(receiver.accepted()) == 4

    with engine.begin() as conn:
        [replay_id] = endpoints.replay(conn, T0, T0 + 50, webhook_id=hook.id)
        assert endpoints.pending_replays(conn) == 1
    await sender.run_once()
    replayed = receiver.accepted()[4:]
    assert [e["email"] for e in replayed] == ["in1@example.net", "in2@example.net"]
    # The same sg_event_id as the first time: receivers can deduplicate.
    first = {e["email"]: e["sg_event_id"] for e in receiver.accepted()[:4]}
    assert all(first[e["email"]] == e["sg_event_id"] for e in replayed)

    await sender.run_once()  # the range is exhausted: the replay ends
    with engine.connect() as conn:
        assert endpoints.pending_replays(conn) == 0
    assert len(receiver.accepted()) == 6
    assert replay_id > 0


async def test_disabled_endpoints_get_nothing(
    engine: sa.Engine, receiver: WebhookReceiver, sender: WebhookSender
) -> None:
    add_hook(engine, receiver.url, enabled=False)
    emit(engine, (events.Kind.DELIVERED, "a@example.net", T0))
    await sender.run_once()
    assert receiver.posts == []


def test_endpoint_urls_and_kinds_are_checked(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        for url in ("ftp://x.test/", "not a url", "http:///path"):
            with pytest.raises(ValueError):
                endpoints.create(conn, url)
        with pytest.raises(ValueError, match="unknown event kind"):
            endpoints.create(conn, "http://127.0.0.1/", kinds=["opened"])
