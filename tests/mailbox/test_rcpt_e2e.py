"""Local recipients at RCPT time, against a real ``postroom serve``:
unknown users, aliases, catch-all, sub-addresses, postmaster, quotas;
and the ``user``/``alias`` commands that set them up."""

from __future__ import annotations

import smtplib
from collections.abc import Callable

import pytest

from postroom.mailbox.recipients import MAILBOX_FULL, UNKNOWN_USER
from postroom.mailbox.store import MailStore
from postroom.protocol.smtp import replies
from postroom.protocol.smtp.replies import Reply
from postroom.testing.process import LOOPBACK, PostroomProcess, queued_as

PASSWORD = "pw"
MESSAGE = b"Subject: hi\r\n\r\nhello\r\n"


def expected(reply: Reply) -> tuple[int, bytes]:
    text = "\n".join(f"{reply.enhanced} {line}" for line in reply.lines)
    return reply.code, text.encode()


@pytest.fixture(scope="module")
def node(module_postroom_factory: Callable[..., PostroomProcess]) -> PostroomProcess:
    server = module_postroom_factory(start=False)
    for user in ("alice", "bob", "full", "tiny"):
        server.add_user(f"{user}@postroom.test", PASSWORD)
    for args in (
        ["user", "quota", "full@postroom.test", "1K"],
        ["user", "quota", "tiny@postroom.test", "10"],
        ["alias", "add", "sales@postroom.test", "bob@postroom.test", "x@remote.test"],
    ):
        done = server.cli(*args)
        assert done.returncode == 0, done.stderr
    # Fill "full" past its quota, as earlier deliveries would have.
    with MailStore(server.data_dir / "mailboxes").open("full@postroom.test") as box:
        box.append(b"x" * 2048)
    return server.start()


def rcpt_replies(node: PostroomProcess, *rcpts: str) -> list[tuple[int, bytes]]:
    with smtplib.SMTP(LOOPBACK, node.relay_port, timeout=10) as client:
        client.ehlo("client.test")
        client.mail("s@client.test")
        return [client.rcpt(r) for r in rcpts]


def test_unknown_local_user_is_refused_at_rcpt(node: PostroomProcess) -> None:
    assert rcpt_replies(node, "nobody@postroom.test", "alice@postroom.test") == [
        expected(UNKNOWN_USER),
        expected(replies.RECIPIENT_OK),
    ]
    assert UNKNOWN_USER.code == 550 and UNKNOWN_USER.enhanced == "5.1.1"


def test_known_addresses_are_accepted(node: PostroomProcess) -> None:
    ok = expected(replies.RECIPIENT_OK)
    assert (
        rcpt_replies(
            node,
            "Alice@PostRoom.test",
            "alice+lists@postroom.test",
            "sales@postroom.test",
            "postmaster@postroom.test",
            "postmaster",
            "someone@other.test",  # relayed: loopback is trusted
        )
        == [ok] * 6
    )


def test_full_mailbox_is_452_at_rcpt(node: PostroomProcess) -> None:
    assert rcpt_replies(node, "full@postroom.test") == [expected(MAILBOX_FULL)]
    assert MAILBOX_FULL.code == 452 and MAILBOX_FULL.enhanced == "4.2.2"


def test_message_that_would_overflow_is_452_at_end_of_data(
    node: PostroomProcess,
) -> None:
    with smtplib.SMTP(LOOPBACK, node.relay_port, timeout=10) as client:
        client.ehlo("client.test")
        client.mail("s@client.test")
        assert client.rcpt("tiny@postroom.test") == expected(replies.RECIPIENT_OK)
        assert client.data(MESSAGE) == expected(MAILBOX_FULL)


def test_alias_is_expanded_into_the_queue(node: PostroomProcess) -> None:
    with smtplib.SMTP(LOOPBACK, node.relay_port, timeout=10) as client:
        client.ehlo("client.test")
        client.mail("s@client.test")
        client.rcpt("sales@postroom.test")
        client.rcpt("alice+tag@postroom.test")
        code, text = client.data(MESSAGE)
    assert code == 250
    with node.queue() as queue:
        envelope, _ = queue.get(queued_as(text))
    assert [(r.address, r.orcpt) for r in envelope.recipients] == [
        ("bob@postroom.test", "rfc822;sales@postroom.test"),
        ("x@remote.test", "rfc822;sales@postroom.test"),
        ("alice+tag@postroom.test", None),
    ]


def test_catch_all(node: PostroomProcess) -> None:
    done = node.cli("alias", "add", "@postroom.test", "alice@postroom.test")
    assert done.returncode == 0, done.stderr
    try:
        assert rcpt_replies(node, "anything@postroom.test") == [
            expected(replies.RECIPIENT_OK)
        ]
        listed = node.cli("alias", "list").stdout.splitlines()
        assert "@postroom.test       alice@postroom.test" in listed
    finally:
        assert node.cli("alias", "del", "@postroom.test").returncode == 0
    assert rcpt_replies(node, "anything@postroom.test") == [expected(UNKNOWN_USER)]
