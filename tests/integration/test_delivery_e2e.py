"""Delivery end to end: a real ``postroom serve`` relays to providers on
loopback, finding them through a DNS server the test runs (the seed
story's stage, ``postroom.testing.stage``)."""

from __future__ import annotations

import email
import email.policy
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import dkim
import pytest

from postroom.mailbox.store import MailStore
from postroom.protocol.smtp.replies import Reply
from postroom.testing import peers
from postroom.testing.process import PostroomProcess
from postroom.testing.providers import FakeProvider
from postroom.testing.stage import (
    CLIENTS,
    INVITATION,
    ORGANISER,
    Stage,
    open_stage,
    send,
    wait_until,
)


@pytest.fixture
def stage() -> Iterator[Stage]:
    with open_stage() as opened:
        yield opened


def delivered_to(provider: FakeProvider) -> list[str]:
    return [r for t in provider.transactions if t.accepted for r in t.recipients]


@pytest.mark.parametrize("workers", [1, 2])
def test_invitation_reaches_all_18_clients(
    stage: Stage, postroom_factory: Callable[..., PostroomProcess], workers: int
) -> None:
    settings = stage.settings()
    settings["smtp"] = {"workers": workers}
    node = postroom_factory(settings)
    queue_id = send(node, CLIENTS, INVITATION)

    for domain in ("gmail.test", "outlook.test", "hotmail.test"):
        provider = stage.providers[domain]
        wanted = sorted(c for c in CLIENTS if c.endswith(domain))
        wait_until(lambda p=provider, w=wanted: sorted(delivered_to(p)) == w)
        for transaction in provider.transactions:
            assert transaction.sender == ORGANISER
            # Byte for byte after our Received header.
            assert transaction.data.endswith(INVITATION)
            assert transaction.data.startswith(b"Received: ")

    # One line per recipient in the log, each starting with the queue id.
    wait_until(lambda: len(node.log_events("delivered")) == 18)
    for line in node.log_events("delivered"):
        assert line.startswith(f"{queue_id}: delivered to=<client")
        assert "relay=mx." in line
    wait_until(lambda: bool(node.log_events("removed")))

    shown = node.cli("queue", "show", queue_id)
    assert shown.returncode == 0, shown.stderr
    assert "State: removed" in shown.stdout
    attempts = [ln for ln in shown.stdout.splitlines() if ln.startswith("Attempt:")]
    assert len(attempts) == 18
    assert all(" delivered relay=mx." in a for a in attempts)
    assert any("mx.hotmail.test[127.0.0.4]" in a for a in attempts)


def test_greylisting_then_flush_delivers(
    stage: Stage, postroom_factory: Callable[..., PostroomProcess]
) -> None:
    stage.providers["gmail.test"].update(greylist=True)
    node = postroom_factory(stage.settings())
    queue_id = send(node, ["grey@gmail.test"], INVITATION)
    wait_until(lambda: bool(node.log_events("deferred")))
    [line] = node.log_events("deferred")
    assert line.startswith(f"{queue_id}: deferred to=<grey@gmail.test>")
    assert "failure=greylisted" in line

    listed = node.cli("queue", "list", "--json")
    [message] = json.loads(listed.stdout)
    [rcpt] = message["recipients"]
    assert rcpt["state"] == "deferred" and rcpt["last_reply"].startswith("45")

    flushed = node.cli("queue", "flush", "--domain", "gmail.test")
    assert flushed.returncode == 0, flushed.stderr
    assert "1 recipient due now" in flushed.stdout
    wait_until(lambda: bool(node.log_events("delivered")))
    assert delivered_to(stage.providers["gmail.test"]) == ["grey@gmail.test"]


def test_bounce_returns_a_report_to_the_sender(
    stage: Stage, postroom_factory: Callable[..., PostroomProcess]
) -> None:
    stage.providers["outlook.test"].update(
        reject={"gone@outlook.test": Reply.of(
            550, "5.1.1", "The recipient does not exist")}
    )
    node = postroom_factory(stage.settings())
    queue_id = send(node, ["gone@outlook.test", "here@outlook.test", "x@null.test"],
                    INVITATION)

    organiser = stage.providers["sender.test"]
    wait_until(lambda: bool(organiser.transactions))
    [notice] = organiser.transactions
    assert notice.sender == "" and notice.recipients == [ORGANISER]
    report = email.message_from_bytes(notice.data, policy=email.policy.default)
    assert report.get_content_type() == "multipart/report"
    status = next(p for p in report.walk()
                  if p.get_content_type() == "message/delivery-status")
    text = status.as_string()
    assert "gone@outlook.test" in text and "5.1.1" in text
    assert "x@null.test" in text and "5.1.10" in text
    assert "here@outlook.test" not in text
    assert delivered_to(stage.providers["outlook.test"]) == ["here@outlook.test"]

    bounced = node.log_events("bounced")
    assert {ln.split(" ")[2] for ln in bounced} == {
        "to=<gone@outlook.test>", "to=<x@null.test>"}
    assert all(ln.startswith(f"{queue_id}: ") for ln in bounced)


def test_dkim_signature_verifies_at_the_provider(
    stage: Stage, postroom_factory: Callable[..., PostroomProcess]
) -> None:
    node = postroom_factory(stage.settings(), start=False)
    made = node.cli("dkim", "keygen", "sender.test", "--selector", "s1")
    assert made.returncode == 0, made.stderr
    record = "".join(
        part for part in made.stdout.split('"')[1::2]
    ).encode()
    node.start()
    send(node, ["signed@hotmail.test"], INVITATION)
    provider = stage.providers["hotmail.test"]
    wait_until(lambda: bool(provider.transactions))
    data = provider.transactions[0].data
    assert b"DKIM-Signature:" in data

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"s1._domainkey.sender.test."
        return record

    assert dkim.verify(data, dnsfunc=dnsfunc)


def test_local_domain_goes_to_a_maildir(
    stage: Stage, postroom_factory: Callable[..., PostroomProcess]
) -> None:
    node = postroom_factory(stage.settings(), start=False)
    # Since #4 a local address must name an account (or an alias).
    node.add_user("alice@postroom.test", "pw")
    node.start()
    send(node, ["Alice+events@postroom.test"], INVITATION)
    new = node.data_dir / "mailboxes" / "postroom.test" / "alice" / "Maildir" / "new"
    wait_until(lambda: new.is_dir() and any(new.iterdir()))
    [path] = list(new.iterdir())
    stored = path.read_bytes()
    assert stored.startswith(
        f"Return-Path: <{ORGANISER}>\r\n"
        "Delivered-To: Alice+events@postroom.test\r\n".encode()
    )
    assert stored.endswith(INVITATION)

    # What POP3 and IMAP will read: UID 1 in INBOX, the same bytes.
    with MailStore(node.data_dir / "mailboxes").open("alice@postroom.test") as box:
        [info] = box.messages()
        assert (info.uid, info.size) == (1, len(stored))
        assert box.read(1) == stored


@pytest.mark.peers
def test_relays_to_a_private_postfix_and_smtp_sink(
    stage: Stage, postroom_factory: Callable[..., PostroomProcess],
    tmp_path: Path, require_tool: Callable[[str], str],
) -> None:
    require_tool("postfix")
    require_tool("smtp-sink")
    postfix_port, sink_port = peers.free_port(), peers.free_port()
    with peers.start_postfix(peers.make_root(), postfix_port) as postfix, \
            peers.start_smtp_sink(tmp_path / "sink", sink_port) as sink:
        node = postroom_factory(stage.settings(routes={
            "postfix.test": f"127.0.0.1:{postfix_port}",
            "sink.test": f"[127.0.0.1]:{sink_port}",
        }))
        send(node, ["a@postfix.test", "b@postfix.test", "c@sink.test"], INVITATION)
        wait_until(lambda: len(node.log_events("delivered")) == 3)
        wait_until(lambda: postfix.queued("hold") == 1)
        lines = node.log_events("delivered")
        assert any(f"relay=127.0.0.1[127.0.0.1]:{postfix_port}" in ln for ln in lines)
        assert any(f"relay=127.0.0.1[127.0.0.1]:{sink_port}" in ln for ln in lines)
        wait_until(lambda: sink.messages() == 1)
