"""The delivery engine's scheduling, with a fake clock, a fake router and
fake SMTP connections: retries, expiry, notices, limits, administrative
changes and restarts. The real client, router and providers are tested
end to end in test_delivery_e2e.py.
"""

from __future__ import annotations

import email
import email.policy
import random
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa

from postroom import config as config_mod
from postroom.config import Config, DestinationPolicy
from postroom.delivery.engine import DeliveryEngine
from postroom.delivery.outcome import (
    BOUNCED,
    DEFERRED,
    DELIVERED,
    DeliveryError,
    Peer,
    Result,
    Route,
)
from postroom.ids import new_queue_id
from postroom.protocol.smtp.client import Capabilities
from postroom.protocol.smtp.replies import Reply
from postroom.queue.envelope import Envelope, Recipient
from postroom.queue.spool import Spool
from postroom.queue.store import QueueStore
from postroom.store import db
from postroom.store import queue as tables
from postroom.testing.clock import FakeClock

CONTENT = b"From: a@sender.test\r\nSubject: hi\r\n\r\nHello.\r\n"
OK = Reply.of(250, "2.0.0", "Ok: queued")
LATER = Reply.of(450, "4.2.0", "Mailbox busy, try later")
UNKNOWN = Reply.of(550, "5.1.1", "No such user")


@dataclass
class FakeClient:
    """Answers each recipient from the script of the provider."""

    provider: FakeProviders
    peer: Peer
    tls: str = ""
    messages_sent: int = 0
    open: bool = True
    capabilities: Capabilities = field(
        default_factory=lambda: Capabilities(esmtp=True, dsn=True)
    )

    @property
    def usable(self) -> bool:
        return self.open

    async def send(
        self, envelope: Envelope, recipients: Sequence[Recipient], content: bytes
    ) -> list[Result]:
        self.provider.transactions.append(
            (envelope.queue_id, [r.address for r in recipients], content)
        )
        if envelope.sender == "":
            self.provider.notices.append((envelope, content))
        self.messages_sent += 1
        results = []
        for r in recipients:
            reply = self.provider.answer(r.address)
            status = (DELIVERED if reply.code < 400
                      else DEFERRED if reply.code < 500 else BOUNCED)
            results.append(Result(status, reply, self.peer))
        return results

    async def close(self) -> None:
        self.open = False
        self.provider.closed += 1


@dataclass
class FakeProviders:
    """Scripted answers per address (a list used in turn, the last one
    repeating), routing errors per domain, and a record of it all."""

    script: dict[str, list[Reply]] = field(default_factory=dict)
    route_errors: dict[str, DeliveryError] = field(default_factory=dict)
    connect_errors: dict[str, DeliveryError] = field(default_factory=dict)
    transactions: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    notices: list[tuple[Envelope, bytes]] = field(default_factory=list)
    connections: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    closed: int = 0
    without_dsn: set[str] = field(default_factory=set)

    def answer(self, address: str) -> Reply:
        replies = self.script.get(address, [OK])
        return replies.pop(0) if len(replies) > 1 else replies[0]

    def destination(self, domain: str) -> str:
        return domain.lower()

    async def route(self, domain: str) -> Route:
        if domain in self.route_errors:
            raise self.route_errors[domain]
        return Route(destination=domain, transport="smtp")

    async def connect(self, route: Route) -> FakeClient:
        if route.destination in self.connect_errors:
            raise self.connect_errors[route.destination]
        self.connections[route.destination] += 1
        return FakeClient(
            self,
            Peer(f"mx.{route.destination}", "127.0.0.9", 25),
            capabilities=Capabilities(
                esmtp=True, dsn=route.destination not in self.without_dsn
            ),
        )


@dataclass
class World:
    config: Config
    spool: Spool
    engine: DeliveryEngine
    providers: FakeProviders
    clock: FakeClock
    store: QueueStore
    db: sa.Engine

    async def queue(
        self,
        *rcpts: str,
        sender: str = "a@sender.test",
        notify: tuple[str, ...] | None = None,
        ret: str | None = None,
    ) -> str:
        env = Envelope(
            queue_id=new_queue_id(),
            sender=sender,
            recipients=[Recipient(r, notify=notify) for r in rcpts],
            received_at=self.clock.time(),
            ret=ret,
        )
        await self.spool.commit(env, CONTENT)
        return env.queue_id

    def states(self, queue_id: str) -> dict[str, str]:
        r = tables.recipients
        with self.db.connect() as conn:
            return dict(
                conn.execute(
                    sa.select(r.c.address, r.c.state).where(r.c.queue_id == queue_id)
                ).all()
            )

    def message_state(self, queue_id: str) -> str:
        m = tables.messages
        with self.db.connect() as conn:
            return conn.execute(
                sa.select(m.c.state).where(m.c.queue_id == queue_id)
            ).scalar_one()

    def notices(self) -> list[tuple[Envelope, email.message.EmailMessage]]:
        """Notices (from <>) the engine sent, or still queued."""
        out = {}
        for info in self.store.list_messages():
            if info.sender == "":
                envelope, _ = self.store.get(info.queue_id)
                out[info.queue_id] = (envelope, self.store.read_content(info.queue_id))
        for envelope, raw in self.providers.notices:
            out[envelope.queue_id] = (envelope, raw)
        return [
            (env, email.message_from_bytes(raw, policy=email.policy.default))
            for env, raw in out.values()
            if env.listener == "delivery"
        ]


def make_config(tmp_path: Path, **delivery: object) -> Config:
    config = config_mod.load(None, {})
    config.data_dir = str(tmp_path / "data")
    config.hostname = "mta.sender.test"
    for key, value in delivery.items():
        setattr(config.delivery, key, value)
    return config


@pytest.fixture
async def world(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[World]:
    marker = request.node.get_closest_marker("delivery")
    settings = dict(marker.kwargs) if marker else {}
    config = make_config(tmp_path, **settings)
    engine_db = db.create_engine(config.database_url)
    spool = Spool(config.spool_path, engine_db, fsync=False)
    await spool.start()
    clock = FakeClock()
    providers = FakeProviders()

    engine = DeliveryEngine(
        config,
        engine_db,
        router=providers,
        connect=providers.connect,
        notices=spool,
        clock=clock,
        rng=random.Random(7),
    )
    store = QueueStore(engine_db, config.spool_path)
    world = World(config, spool, engine, providers, clock, store, engine_db)
    yield world
    await engine.stop()
    await spool.close()
    engine_db.dispose()


async def test_delivers_each_destination_and_removes_the_message(world: World) -> None:
    qid = await world.queue("b@one.test", "c@two.test", "d@one.test")
    await world.engine.run_until_idle()

    assert world.states(qid) == {
        "b@one.test": "delivered",
        "c@two.test": "delivered",
        "d@one.test": "delivered",
    }
    assert world.message_state(qid) == "removed"
    # One transaction per destination, both recipients of one.test together.
    sent = sorted((q, sorted(r)) for q, r, _ in world.providers.transactions)
    assert sent == [(qid, ["b@one.test", "d@one.test"]), (qid, ["c@two.test"])]
    assert world.providers.transactions[0][2] == CONTENT
    attempts = world.store.attempts(qid)
    assert [(a.status, a.remote_host, a.code) for a in attempts] == [
        ("delivered", a.remote_host, 250) for a in attempts
    ]
    assert {a.remote_ip for a in attempts} == {"127.0.0.9"}


async def test_deferral_retries_after_backoff_then_delivers(world: World) -> None:
    world.providers.script["b@one.test"] = [LATER, OK]
    qid = await world.queue("b@one.test")
    await world.engine.run_until_idle()
    assert world.states(qid) == {"b@one.test": "deferred"}
    _env, info = world.store.get(qid)
    delay = info.recipients[0].next_attempt - world.clock.time()  # type: ignore[attr-defined]
    assert 270 <= delay <= 330  # 5 minutes, 10% jitter

    world.clock.advance(200)
    await world.engine.run_until_idle()
    assert len(world.providers.transactions) == 1  # not due yet

    world.clock.advance(131)
    await world.engine.run_until_idle()
    assert world.states(qid) == {"b@one.test": "delivered"}
    assert [a.attempt for a in world.store.attempts(qid)] == [1, 2]
    assert world.message_state(qid) == "removed"


async def test_backoff_doubles_up_to_the_maximum(world: World) -> None:
    world.providers.script["b@one.test"] = [LATER]
    qid = await world.queue("b@one.test")
    delays = []
    for _ in range(7):
        await world.engine.run_until_idle()
        _env, info = world.store.get(qid)
        due = info.recipients[0].next_attempt  # type: ignore[attr-defined]
        delays.append(due - world.clock.time())
        world.clock.advance(due - world.clock.time() + 1)
    bases = [300, 600, 1200, 2400, 4000, 4000, 4000]
    for delay, base in zip(delays, bases, strict=True):
        assert base * 0.9 <= delay <= base * 1.1


async def test_bounce_sends_a_notice_to_the_sender(world: World) -> None:
    world.providers.script["x@one.test"] = [UNKNOWN]
    qid = await world.queue("x@one.test", "ok@one.test")
    await world.engine.run_until_idle()
    assert world.states(qid) == {"x@one.test": "bounced", "ok@one.test": "delivered"}

    [(envelope, notice)] = world.notices()
    assert envelope.sender == ""
    assert [r.address for r in envelope.recipients] == ["a@sender.test"]
    assert notice.get_content_type() == "multipart/report"
    status = next(
        p for p in notice.walk() if p.get_content_type() == "message/delivery-status"
    )
    text = status.as_string()
    assert "x@one.test" in text and "5.1.1" in text
    assert "ok@one.test" not in text
    [attempt] = [a for a in world.store.attempts(qid) if a.status == "bounced"]
    assert attempt.failure == "bad-mailbox"


async def test_notice_itself_is_delivered_and_never_bounced(world: World) -> None:
    world.providers.script["x@one.test"] = [UNKNOWN]
    world.providers.script["a@sender.test"] = [UNKNOWN]
    await world.queue("x@one.test")
    await world.engine.run_until_idle()  # bounce, notice queued and tried
    await world.engine.run_until_idle()
    # The notice to a@sender.test bounced too: no notice about the notice.
    assert len(world.notices()) == 1
    to_sender = [t for t in world.providers.transactions if t[1] == ["a@sender.test"]]
    assert len(to_sender) == 1


async def test_notify_never_and_null_sender_get_no_notice(world: World) -> None:
    world.providers.script["x@one.test"] = [UNKNOWN]
    await world.queue("x@one.test", notify=())
    await world.queue("x@one.test", sender="")
    await world.engine.run_until_idle()
    assert world.notices() == []


@pytest.mark.delivery(delay_warning_after=3600.0)
async def test_delay_notice_once_then_expiry_bounces(world: World) -> None:
    world.providers.script["slow@one.test"] = [LATER]
    world.providers.script["a@sender.test"] = [LATER]  # keep notices queued
    qid = await world.queue("slow@one.test")
    kinds = []
    for _ in range(200):
        await world.engine.run_until_idle()
        if world.message_state(qid) == "removed":
            break
        _env, info = world.store.get(qid)
        due = info.recipients[0].next_attempt  # type: ignore[attr-defined]
        world.clock.advance(max(1.0, due - world.clock.time() + 1))
    assert world.states(qid) == {"slow@one.test": "bounced"}
    for _env, notice in world.notices():
        kinds.append(notice["Subject"])
    assert len(kinds) == 2, kinds
    assert any("Delayed" in k for k in kinds)
    assert any("Undelivered" in k for k in kinds)
    age = world.clock.time() - world.store.attempts(qid)[0].started_at
    assert 5 * 86400 <= age <= 5 * 86400 + 4000 * 1.1 + 2


async def test_routing_errors_bounce_or_defer(world: World) -> None:
    world.providers.route_errors["null.test"] = DeliveryError(
        Reply.of(550, "5.1.10", "null MX: the domain accepts no mail")
    )
    world.providers.route_errors["flaky.test"] = DeliveryError(
        Reply.of(451, "4.4.3", "DNS lookup failed")
    )
    qid = await world.queue("a@null.test", "b@flaky.test")
    await world.engine.run_until_idle()
    assert world.states(qid) == {"a@null.test": "bounced", "b@flaky.test": "deferred"}
    classes = {a.failure for a in world.store.attempts(qid)}
    assert classes == {"bad-domain", "dns"}


async def test_connection_failure_defers_the_destination(world: World) -> None:
    world.providers.connect_errors["down.test"] = DeliveryError(
        Reply.of(451, "4.4.1", "connection refused"),
        Peer("mx.down.test", "127.0.0.5", 25),
    )
    ids_ = [await world.queue(f"u{i}@down.test") for i in range(3)]
    await world.engine.run_until_idle()
    for qid in ids_:
        assert set(world.states(qid).values()) == {"deferred"}
        [attempt] = world.store.attempts(qid)
        assert (attempt.remote_ip, attempt.failure) == ("127.0.0.5", "network")


async def test_success_after_deferrals_wakes_the_destination(world: World) -> None:
    world.providers.script["a@site.test"] = [LATER, OK]
    world.providers.script["b@site.test"] = [LATER, OK]
    first = await world.queue("a@site.test")
    second = await world.queue("b@site.test")
    await world.engine.run_until_idle()
    assert set(world.states(first).values()) == {"deferred"}

    world.clock.advance(60)  # long before the retry is due
    third = await world.queue("c@site.test")
    await world.engine.run_until_idle()
    for qid in (first, second, third):
        assert set(world.states(qid).values()) == {"delivered"}, qid


@pytest.mark.delivery(max_recipients_per_message=2, max_messages_per_connection=2,
                      max_connections_per_destination=1)
async def test_recipient_and_message_limits_per_connection(world: World) -> None:
    qid = await world.queue(*(f"u{i}@big.test" for i in range(5)))
    await world.engine.run_until_idle()
    sizes = [len(r) for q, r, _ in world.providers.transactions if q == qid]
    assert sizes == [2, 2, 1]
    for i in range(4):
        await world.queue(f"v{i}@many.test")
    await world.engine.run_until_idle()
    assert world.providers.connections["many.test"] == 2


async def test_rate_limit_spreads_messages_out(world: World) -> None:
    world.config.delivery.destinations["slow.test"] = DestinationPolicy(
        messages_per_minute=2
    )
    world.engine._book._cache.clear()
    for i in range(5):
        await world.queue(f"u{i}@slow.test")
    await world.engine.run_until_idle()
    assert len(world.providers.transactions) == 2
    world.clock.advance(30)
    await world.engine.run_until_idle()
    assert len(world.providers.transactions) == 3
    world.clock.advance(60)
    await world.engine.run_until_idle()
    assert len(world.providers.transactions) == 5


async def test_hold_release_flush_and_admin_bounce(world: World) -> None:
    world.providers.script["later@one.test"] = [LATER, OK]
    held = await world.queue("h@one.test")
    world.store.hold([held])
    deferred = await world.queue("later@one.test")
    doomed = await world.queue("z@one.test", "later@one.test")
    world.store.hold([doomed])
    await world.engine.run_until_idle()
    assert world.states(held) == {"h@one.test": "queued"}
    assert world.states(deferred) == {"later@one.test": "deferred"}

    # flush makes the deferred recipient due at the (real) time now,
    # which is before the fake clock's; bring the fake clock up to it.
    world.clock.now = max(world.clock.now, __import__("time").time())
    assert world.store.flush(domain="one.test") == 1
    await world.engine.run_until_idle()
    assert world.states(deferred) == {"later@one.test": "delivered"}

    world.store.release([held])
    world.clock.now = max(world.clock.now, __import__("time").time())
    await world.engine.run_until_idle()
    assert world.states(held) == {"h@one.test": "delivered"}

    assert world.store.bounce([doomed]) == 2
    await world.engine.run_until_idle()
    assert world.states(doomed) == {
        "z@one.test": "bounced", "later@one.test": "bounced"}
    [(_env, notice)] = world.notices()
    assert "administrator" in notice.as_string()


async def test_restart_returns_active_recipients(world: World) -> None:
    qid = await world.queue("b@one.test")
    with world.db.begin() as conn:
        conn.execute(
            tables.recipients.update().values(state=tables.ACTIVE, attempts=0)
        )
    await world.engine.run_until_idle()
    assert world.states(qid) == {"b@one.test": "active"}  # taken by "someone"
    await world.engine.start()  # a new engine's first act
    await world.engine.run_until_idle()
    assert world.states(qid) == {"b@one.test": "delivered"}


async def test_success_notice_only_when_the_next_hop_cannot_relay_it(
    world: World,
) -> None:
    world.providers.without_dsn.add("old.test")
    await world.queue("a@old.test", "b@new.test", notify=("SUCCESS",))
    await world.engine.run_until_idle()
    [(_env, notice)] = world.notices()
    status = next(
        p for p in notice.walk() if p.get_content_type() == "message/delivery-status"
    ).as_string()
    assert "a@old.test" in status and "Action: relayed" in status
    assert "b@new.test" not in status


# -- events and the bounce list (postroom/events.py, suppressions.py) -----


def recorded_events(world: World, queue_id: str) -> list[tuple[str, str, str | None]]:
    from postroom.store.events import events as ev

    with world.db.connect() as conn:
        rows = conn.execute(
            sa.select(ev.c.kind, ev.c.recipient, ev.c.status)
            .where(ev.c.queue_id == queue_id)
            .order_by(ev.c.id)
        ).all()
    return [(r.kind, r.recipient, r.status) for r in rows]


async def test_each_result_is_an_event_and_hard_bounces_are_listed(
    world: World,
) -> None:
    from postroom import suppressions

    spam = Reply.of(554, "5.7.1", "Message rejected as spam")
    world.providers.script["x@one.test"] = [UNKNOWN]
    world.providers.script["s@one.test"] = [spam]
    world.providers.script["later@one.test"] = [LATER]
    qid = await world.queue("x@one.test", "s@one.test", "later@one.test", "ok@one.test")
    await world.engine.run_until_idle()

    found = recorded_events(world, qid)
    assert found[:4] == [
        ("processed", "x@one.test", None),
        ("processed", "s@one.test", None),
        ("processed", "later@one.test", None),
        ("processed", "ok@one.test", None),
    ]
    assert sorted(found[4:]) == [
        ("bounce", "s@one.test", "5.7.1"),
        ("bounce", "x@one.test", "5.1.1"),
        ("deferred", "later@one.test", None),
        ("delivered", "ok@one.test", None),
    ]
    with world.db.connect() as conn:
        # A bad mailbox is the address's fault; a spam block is not.
        assert suppressions.is_suppressed(conn, "x@one.test")
        assert not suppressions.is_suppressed(conn, "s@one.test")
        [entry] = suppressions.entries(conn, suppressions.BOUNCE)
    assert entry.status == "5.1.1" and "No such user" in (entry.reason or "")
