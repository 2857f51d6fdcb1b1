"""POP3 end to end: Python's poplib against a real ``postroom serve``.

One node serves the module (starting one costs a second or two); each
test logs in as its own user, whose INBOX it fills through the mailbox
API as local delivery would. Bodies must come back byte for byte.
"""

from __future__ import annotations

import itertools
import poplib
import socket
from collections.abc import Callable

import pytest

from postroom.mailbox.store import MailStore
from postroom.protocol.pop3 import responses
from postroom.testing.process import KINDS, LOOPBACK, POP3_KINDS, PostroomProcess
from postroom.testing.stage import INVITATION, open_stage, send, wait_until

PASSWORD = "pop secret"
_users = itertools.count(1)

# Messages that tempt a server to change them: dot lines that need
# stuffing, a final line without CRLF, 8-bit text, a long line.
MESSAGES = [
    b"From: a@example.org\r\nSubject: one\r\n\r\nHello.\r\n",
    b"Subject: dots\r\n\r\n.\r\n..\r\n.leading dot\r\nend\r\n",
    b"Subject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    + "Grüße, naïve café\r\n".encode()
    + b"x" * 990  # within RFC 5322 and poplib's 2048-octet lines
    + b"\r\n",
    b"Subject: empty body\r\n\r\n",
]


@pytest.fixture(scope="module")
def node(
    module_postroom_factory: Callable[..., PostroomProcess],
) -> PostroomProcess:
    return module_postroom_factory(kinds=KINDS + POP3_KINDS)


def new_user(node: PostroomProcess, messages: list[bytes]) -> str:
    """A fresh account whose INBOX holds *messages*, in that order."""
    user = f"user{next(_users)}@postroom.test"
    node.add_user(user, PASSWORD)
    fill(node, user, messages)
    return user


def fill(node: PostroomProcess, user: str, messages: list[bytes]) -> None:
    with MailStore(node.data_dir / "mailboxes").open(user) as inbox:
        for data in messages:
            inbox.append(data)


def login(node: PostroomProcess, user: str) -> poplib.POP3:
    client = poplib.POP3(LOOPBACK, node.pop3_port, timeout=10)
    client.user(user)
    client.pass_(PASSWORD)
    return client


def body(lines: list[bytes]) -> bytes:
    # poplib has undone the dot-stuffing and cut the CRLFs off.
    return b"".join(line + b"\r\n" for line in lines)


def test_retr_returns_every_byte(node: PostroomProcess) -> None:
    user = new_user(node, MESSAGES)
    client = login(node, user)

    count, octets = client.stat()
    sizes = [int(line.split()[1]) for line in client.list()[1]]
    got = [body(client.retr(n)[1]) for n in range(1, count + 1)]
    client.quit()

    assert got == MESSAGES
    assert sizes == [len(m) for m in MESSAGES]
    assert octets == sum(sizes)


def test_top_sends_header_and_first_lines(node: PostroomProcess) -> None:
    user = new_user(node, [b"Subject: t\r\nX: y\r\n\r\n1\r\n2\r\n3\r\n"])
    client = login(node, user)

    top0 = client.top(1, 0)[1]
    top2 = client.top(1, 2)[1]
    client.quit()

    assert top0 == [b"Subject: t", b"X: y", b""]
    assert top2 == [b"Subject: t", b"X: y", b"", b"1", b"2"]


def test_stls_then_login(node: PostroomProcess) -> None:
    user = new_user(node, MESSAGES[:1])
    client = poplib.POP3(LOOPBACK, node.pop3_port, timeout=10)

    before = client.capa()
    client.stls(node.client_context())
    after = client.capa()
    client.user(user)
    client.pass_(PASSWORD)
    got = body(client.retr(1)[1])
    client.quit()

    assert "STLS" in before and "STLS" not in after
    assert got == MESSAGES[0]


def test_pop3s_is_tls_from_the_first_byte(node: PostroomProcess) -> None:
    user = new_user(node, MESSAGES[:2])
    client = poplib.POP3_SSL(
        LOOPBACK, node.pop3s_port, context=node.client_context(), timeout=10
    )

    capabilities = client.capa()
    client.user(user)
    client.pass_(PASSWORD)
    got = [body(client.retr(n)[1]) for n in (1, 2)]
    client.quit()

    assert "STLS" not in capabilities and "USER" in capabilities
    assert got == MESSAGES[:2]


def test_auth_plain(node: PostroomProcess) -> None:
    import base64

    user = new_user(node, MESSAGES[:1])
    client = poplib.POP3(LOOPBACK, node.pop3_port, timeout=10)
    token = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()

    reply = client._shortcmd(f"AUTH PLAIN {token}")
    stat = client.stat()
    client.quit()

    assert reply.startswith(b"+OK maildrop has 1 messages")
    assert stat == (1, len(MESSAGES[0]))


def test_wrong_password_says_auth(node: PostroomProcess) -> None:
    user = new_user(node, [])
    client = poplib.POP3(LOOPBACK, node.pop3_port, timeout=10)
    client.user(user)

    with pytest.raises(poplib.error_proto) as refused:
        client.pass_("wrong")
    client.quit()

    assert refused.value.args[0] == responses.AUTH_FAILED.wire.rstrip()


def test_uidl_is_stable_across_sessions_and_new_mail(node: PostroomProcess) -> None:
    user = new_user(node, MESSAGES[:2])
    first = login(node, user)
    ids_before = first.uidl()[1]
    first.quit()

    fill(node, user, MESSAGES[2:3])
    second = login(node, user)
    ids_after = second.uidl()[1]
    second.quit()

    assert ids_after[:2] == ids_before
    assert len({line.split()[1] for line in ids_after}) == 3


def test_dele_takes_effect_only_at_quit(node: PostroomProcess) -> None:
    user = new_user(node, MESSAGES[:3])

    # Deleted, then the connection drops without QUIT: nothing goes.
    dropped = login(node, user)
    dropped.dele(1)
    dropped.dele(2)
    dropped.close()
    wait_until(lambda: _stat_when_free(node, user) == 3)

    # RSET unmarks; only what is marked at QUIT goes.
    client = login(node, user)
    client.dele(1)
    client.rset()
    client.dele(2)
    assert client.stat()[0] == 2
    client.quit()

    again = login(node, user)
    left = [body(again.retr(n)[1]) for n in (1, 2)]
    again.quit()
    assert left == [MESSAGES[0], MESSAGES[2]]


def _stat_when_free(node: PostroomProcess, user: str) -> int | None:
    # The server may not have noticed the dropped connection yet.
    try:
        client = login(node, user)
    except poplib.error_proto:
        return None
    count = client.stat()[0]
    client.quit()
    return count


def test_second_session_gets_in_use(node: PostroomProcess) -> None:
    user = new_user(node, MESSAGES[:1])
    holder = login(node, user)
    other = poplib.POP3(LOOPBACK, node.pop3_port, timeout=10)
    other.user(user)

    with pytest.raises(poplib.error_proto) as refused:
        other.pass_(PASSWORD)
    holder.quit()
    other.user(user)
    other.pass_(PASSWORD)
    count = other.stat()[0]
    other.quit()

    assert refused.value.args[0] == responses.MAILDROP_LOCKED.wire.rstrip()
    assert count == 1


def test_pipelined_commands_answered_in_order(node: PostroomProcess) -> None:
    user = new_user(node, MESSAGES)
    commands = f"USER {user}\r\nPASS {PASSWORD}\r\n" + "".join(
        f"RETR {n}\r\n" for n in range(1, len(MESSAGES) + 1)
    )

    with socket.create_connection((LOOPBACK, node.pop3_port), timeout=10) as sock:
        sock.recv(1024)
        sock.sendall(commands.encode() + b"QUIT\r\n")
        data = b""
        while not data.endswith(b"signing off (4 messages left)\r\n"):
            chunk = sock.recv(65536)
            assert chunk, data[-200:]
            data += chunk

    assert data.count(b"\r\n.\r\n") == len(MESSAGES)
    assert b"\r\n...leading dot\r\n" not in data and b"\r\n..leading dot" in data


def test_uidl_survives_a_restart(
    postroom_factory: Callable[..., PostroomProcess],
) -> None:
    node = postroom_factory(kinds=KINDS + POP3_KINDS)
    user = new_user(node, MESSAGES)
    before = login(node, user)
    ids = before.uidl()[1]
    before.quit()

    node.stop()
    node.start()
    after = login(node, user)
    ids_again = after.uidl()[1]
    after.quit()

    assert ids_again == ids


def test_plaintext_refused_without_tls_when_loopback_not_trusted(
    postroom_factory: Callable[..., PostroomProcess],
) -> None:
    node = postroom_factory(
        {"pop3": {"loopback_is_secure": False}}, kinds=KINDS + POP3_KINDS
    )
    user = new_user(node, MESSAGES[:1])
    client = poplib.POP3(LOOPBACK, node.pop3_port, timeout=10)

    capabilities = client.capa()
    with pytest.raises(poplib.error_proto) as refused:
        client.user(user)
    client.stls(node.client_context())
    client.user(user)
    client.pass_(PASSWORD)
    count = client.stat()[0]
    client.quit()

    assert "USER" not in capabilities and "SASL" not in capabilities
    assert refused.value.args[0] == responses.PLAINTEXT_DISABLED.wire.rstrip()
    assert count == 1


def test_mail_sent_by_smtp_is_fetched_by_pop3(
    postroom_factory: Callable[..., PostroomProcess],
) -> None:
    with open_stage() as stage:
        node = postroom_factory(stage.settings(), kinds=KINDS + POP3_KINDS)
        node.add_user("alice@postroom.test", PASSWORD)
        send(node, ["alice@postroom.test"], INVITATION)

        def arrived() -> bool:
            client = login(node, "alice@postroom.test")
            count = client.stat()[0]
            client.quit()
            return count == 1

        wait_until(arrived)
        client = login(node, "alice@postroom.test")
        got = body(client.retr(1)[1])
        client.quit()

    assert got.startswith(b"Return-Path: <")
    assert got.endswith(INVITATION)

