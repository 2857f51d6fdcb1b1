"""Delivery under faults, end to end: a real ``postroom serve`` against
scripted providers on loopback that are slow, throttle, refuse or hang
up, and a node that is killed (``kill -9``) in the middle of delivering.

The promise under test for crashes (docs/operations.md, "At least
once"): a message answered 250 reaches every recipient even when the
node, or only its delivery process, dies while delivering; a recipient
may get a copy twice only if its provider had taken the message when
the crash came and the node had not yet written that down, so the
number of duplicates is bounded by what was in flight.

The stage (DNS server, providers on 127.0.0.2-5) is the one of
``test_delivery_e2e``. Every wait is bounded.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import smtplib
from collections.abc import Callable, Iterable, Iterator

import pytest

from postroom.protocol.smtp.replies import Reply
from postroom.testing.process import LOOPBACK, PostroomProcess, queued_as
from postroom.testing.providers import FakeProvider
from postroom.testing.stage import ORGANISER, Stage, open_stage, send, wait_until

DOMAINS = ("gmail.test", "outlook.test", "hotmail.test")
MESSAGES = 60  # per crash test: 20 per provider
SEQ = re.compile(rb"^X-Seq: (\d+)\r$", re.MULTILINE)
# Providers answer the end of data slowly, so that a kill finds
# transactions in flight rather than an idle node.
SLOW = {"END-OF-DATA": 0.05}


@pytest.fixture
def stage() -> Iterator[Stage]:
    with open_stage() as opened:
        yield opened


def message(seq: int) -> bytes:
    return (
        f"From: <{ORGANISER}>\r\n"
        f"Subject: Crash test #{seq}\r\n"
        f"X-Seq: {seq}\r\n"
        "\r\n"
        f"Body of message {seq}.\r\n"
    ).encode()


def send_all(node: PostroomProcess, count: int) -> dict[int, str]:
    """Send *count* messages, each to one client of one provider, on one
    connection; the queue id of each by its sequence number."""
    ids = {}
    with smtplib.SMTP(LOOPBACK, node.relay_port, timeout=10) as client:
        client.ehlo("app.sender.test")
        for seq in range(count):
            client.mail(ORGANISER)
            code, text = client.rcpt(f"client{seq}@{DOMAINS[seq % 3]}")
            assert code == 250, text
            code, text = client.data(message(seq))
            assert code == 250, text
            ids[seq] = queued_as(text)
    return ids


def arrivals(stage: Stage) -> collections.Counter[int]:
    """How many accepted copies of each message the providers hold."""
    seen: collections.Counter[int] = collections.Counter()
    for domain in DOMAINS:
        for transaction in stage.providers[domain].accepted:
            [seq] = SEQ.findall(transaction.data)
            seen[int(seq)] += 1
    return seen


def in_flight_bound(stage: Stage) -> int:
    """The most transactions a crash can catch between a provider's
    acceptance and our record of it: one per open connection."""
    return sum(len(stage.providers[d].connections) for d in DOMAINS)


def test_kill_9_of_the_node_while_delivering_loses_nothing(
    stage: Stage, postroom_factory: Callable[..., PostroomProcess]
) -> None:
    for domain in DOMAINS:
        stage.providers[domain].update(delays=SLOW)
    settings = stage.settings()
    settings["smtp"] = {"workers": 2}
    node = postroom_factory(settings)
    ids = send_all(node, MESSAGES)

    # Kill once some, not all, messages have arrived.
    wait_until(lambda: len(arrivals(stage)) >= 5, timeout=30)
    node.kill()
    before = arrivals(stage)
    assert len(before) < MESSAGES, "the node finished before the kill"

    node.start()
    wait_until(lambda: len(arrivals(stage)) == MESSAGES, timeout=60)
    seen = arrivals(stage)
    assert set(seen) == set(range(MESSAGES))
    twice = [seq for seq, n in seen.items() if n > 1]
    assert all(seen[seq] == 2 for seq in twice)
    assert len(twice) <= in_flight_bound(stage), twice
    # Whatever was taken before the crash was put back and retried.
    assert node.wait_for_log("taken before a restart are due")

    # Nothing is left in the queue, and each message's attempts tell
    # what happened to it.
    wait_until(lambda: not queued(node, ids.values()), timeout=30)
    for seq in (0, MESSAGES - 1):
        shown = node.cli("queue", "show", ids[seq])
        assert shown.returncode == 0, shown.stderr
        assert " delivered relay=mx." in shown.stdout


def queued(node: PostroomProcess, ids: Iterable[str]) -> list[str]:
    """Those of *ids* still in the queue."""
    with node.queue() as store:
        waiting = {info.queue_id for info in store.list_messages()}
    return [queue_id for queue_id in ids if queue_id in waiting]


def delivery_pid(node: PostroomProcess) -> int:
    """The delivery process: the worker that writes delivery log lines."""
    pids = {int(m) for m in re.findall(
        r"postroom\.delivery[\w.]*\[(\d+)\]", node.log_text(since_start=True))}
    live = set(node.worker_pids()) & pids
    assert len(live) == 1, (pids, node.worker_pids())
    return live.pop()


def test_kill_9_of_only_the_delivery_process(
    stage: Stage, postroom_factory: Callable[..., PostroomProcess]
) -> None:
    for domain in DOMAINS:
        stage.providers[domain].update(delays=SLOW)
    settings = stage.settings()
    settings["smtp"] = {"workers": 2}
    node = postroom_factory(settings)
    send_all(node, MESSAGES)
    wait_until(lambda: len(arrivals(stage)) >= 5, timeout=30)
    victim = delivery_pid(node)
    os.kill(victim, signal.SIGKILL)

    # The supervisor notices, says so and starts a new one, which takes
    # over what the dead one held; the SMTP workers kept serving.
    wait_until(lambda: bool(node.log_events("worker")), timeout=10)
    assert f"worker exited pid={victim} worker=0 status=signal 9" in node.log_text()
    queue_id = send(node, ["late@gmail.test"], message(MESSAGES))
    wait_until(lambda: len(arrivals(stage)) == MESSAGES + 1, timeout=60)
    seen = arrivals(stage)
    assert len([s for s, n in seen.items() if n > 1]) <= in_flight_bound(stage)
    assert node.running and victim not in node.worker_pids()
    wait_until(lambda: any(ln.startswith(f"{queue_id}: removed")
                           for ln in node.log_events("removed")))


def test_421_throttling_reconnects_and_delivers_everything(
    stage: Stage, postroom_factory: Callable[..., PostroomProcess]
) -> None:
    # After two messages on a connection the provider answers 421 and
    # hangs up, as large providers do to a sender that sends too fast.
    provider = stage.providers["outlook.test"]
    provider.update(max_messages_per_connection=2)
    node = postroom_factory(stage.settings(retry_first=1.0, retry_jitter=0.0))
    for n in range(6):
        send(node, [f"c{n}@outlook.test"], message(n))
    wait_until(lambda: len(provider.accepted) == 6, timeout=30)
    assert sorted(r for t in provider.accepted for r in t.recipients) == [
        f"c{n}@outlook.test" for n in range(6)]
    # No connection carried more than the provider allows.
    per_connection = collections.Counter(t.connection for t in provider.accepted)
    assert max(per_connection.values()) <= 2
    assert len(provider.connections) >= 3
    # Nothing bounced: a 421 is temporary, whatever else happens.
    assert not node.log_events("bounced")
    assert not stage.providers["sender.test"].transactions


def test_5xx_at_mail_bounces_every_recipient_in_one_notice(
    stage: Stage, postroom_factory: Callable[..., PostroomProcess]
) -> None:
    stage.providers["hotmail.test"].update(
        mail_reply=Reply.of(550, "5.7.1", "Sender blocked for poor reputation"))
    node = postroom_factory(stage.settings())
    recipients = ["a@hotmail.test", "b@hotmail.test", "c@hotmail.test",
                  "d@gmail.test"]
    queue_id = send(node, recipients, message(1))
    organiser = stage.providers["sender.test"]
    wait_until(lambda: len(node.log_events("bounced")) == 3)
    wait_until(lambda: bool(organiser.transactions))
    wait_until(lambda: bool(node.log_events("removed")))
    [notice] = organiser.transactions
    assert notice.sender == "" and notice.recipients == [ORGANISER]
    for address in recipients[:3]:
        assert address.encode() in notice.data
    assert b"5.7.1" in notice.data
    bounced = node.log_events("bounced")
    assert all(ln.startswith(f"{queue_id}: bounced") for ln in bounced)
    assert all("failure=spam-blocked" in ln for ln in bounced), bounced
    assert [r for t in stage.providers["gmail.test"].accepted
            for r in t.recipients] == ["d@gmail.test"]


def test_hang_up_after_end_of_data_is_retried(
    stage: Stage, postroom_factory: Callable[..., PostroomProcess]
) -> None:
    # The provider hangs up instead of answering the end of data: we
    # cannot know whether it kept the message, so it is retried (the
    # at-least-once window SMTP leaves open).
    provider = stage.providers["gmail.test"]
    provider.update(drop_after="END-OF-DATA")
    node = postroom_factory(stage.settings(retry_first=0.5, retry_jitter=0.0))
    queue_id = send(node, ["x@gmail.test"], message(7))
    wait_until(lambda: bool(node.log_events("deferred")))
    [line] = node.log_events("deferred")
    assert line.startswith(f"{queue_id}: deferred to=<x@gmail.test>")
    provider.update(drop_after=None)
    wait_until(lambda: bool(node.log_events("delivered")), timeout=30)
    assert len(provider.transactions) >= 2
    assert provider.transactions[-1].accepted


@pytest.fixture
def secure() -> Iterator[FakeProvider]:
    """A provider with a certificate, on 127.0.0.6 (none of the stage's)."""
    with FakeProvider.in_thread("127.0.0.6", 0, tls=True) as provider:
        yield provider


@pytest.mark.parametrize("offer_tls", [True, False])
def test_tls_required_for_a_destination(
    stage: Stage, postroom_factory: Callable[..., PostroomProcess],
    secure: FakeProvider, offer_tls: bool,
) -> None:
    secure.update(starttls=offer_tls)
    node = postroom_factory(stage.settings(
        retry_first=3600.0,
        routes={"secure.test": f"[127.0.0.6]:{secure.port}"},
        destinations={"secure.test": {"tls": "required"}},
    ))
    send(node, ["secret@secure.test"], message(9))
    if offer_tls:
        wait_until(lambda: bool(node.log_events("delivered")))
        [transaction] = secure.accepted
        assert transaction.tls
    else:
        wait_until(lambda: bool(node.log_events("deferred")))
        [line] = node.log_events("deferred")
        assert "failure=tls" in line, line
        assert not secure.transactions


def test_opportunistic_tls_is_used_when_offered(
    stage: Stage, postroom_factory: Callable[..., PostroomProcess],
    secure: FakeProvider,
) -> None:
    # The default policy: STARTTLS when offered, even with a certificate
    # no one could verify (self-signed here); plain text when not.
    node = postroom_factory(stage.settings(
        routes={"secure.test": f"[127.0.0.6]:{secure.port}"}))
    send(node, ["a@secure.test"], message(3))
    send(node, ["b@outlook.test"], message(4))
    wait_until(lambda: bool(secure.accepted))
    wait_until(lambda: bool(stage.providers["outlook.test"].accepted))
    assert secure.accepted[0].tls
    assert not stage.providers["outlook.test"].accepted[0].tls
