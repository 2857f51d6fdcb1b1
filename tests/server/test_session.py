"""The asyncio SMTP server on 127.0.0.1: what the driver around the core
adds. Pipelining in one write, connection limits, timeouts, graceful
shutdown, half-close, STARTTLS with a certificate made at test time,
and AUTH against a fake authenticator.

The spool and the authenticator are fakes from ``postroom.testing.smtp``;
everything else is the real server. Clients are ``SmtpClient`` (exact
bytes, one write per ``send``) or, where a real client library is the
point, the standard library's ``smtplib`` in a worker thread.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import smtplib
import socket
import ssl
import time
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from postroom.config import Config
from postroom.errors import AuthError, SpoolError
from postroom.protocol.smtp import replies
from postroom.protocol.smtp.replies import Reply
from postroom.server import received, tls
from postroom.testing.smtp import (
    LOOPBACK,
    FakeAuthenticator,
    FakeSpool,
    SmtpClient,
    make_config,
    parse_replies,
    running_server,
)

ENVELOPE = b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\n"
PLAIN_ALICE = "AUTH PLAIN " + base64.b64encode(b"\0alice\0secret").decode()
PLAIN_WRONG = "AUTH PLAIN " + base64.b64encode(b"\0alice\0guess").decode()
TEMPORARY_AUTH_FAILURE = "454 4.7.0"  # RFC 4954 §6; no constant yet
QUEUED = "250 2.0.0"


def status(reply: Reply) -> str:
    return f"{reply.code} {reply.enhanced}"


async def connect(port: int) -> SmtpClient:
    client = await SmtpClient.connect(port)
    greeting = await client.read_reply()
    assert greeting.code == 220, greeting
    return client


async def ehlo(client: SmtpClient) -> Reply:
    reply = await client.command("EHLO client.example.org")
    assert reply.code == 250
    return reply


@pytest.fixture
def spool() -> FakeSpool:
    return FakeSpool()


@pytest.fixture
async def port(tmp_path: Path, spool: FakeSpool) -> AsyncIterator[int]:
    """A relay listener with default settings."""
    async with running_server(make_config(tmp_path), spool) as server:
        yield server.bound_ports[0]


# -- pipelining -----------------------------------------------------------------


def _pipelined_exchange(port: int) -> tuple[bytes, bytes]:
    # A blocking client in its own thread, so that the one recv() below
    # really sees only what the server wrote before we read.
    with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220 ")
        sock.sendall(b"EHLO client.example.org\r\n")
        while not reader.readline().startswith(b"250 "):
            pass
        sock.sendall(
            b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\n"
            b"RCPT TO:<carol@example.net>\r\nRCPT TO:<bad\r\nDATA\r\n"
        )
        batch = sock.recv(65536)
        sock.sendall(b"Subject: pipelined\r\n\r\nhi\r\n.\r\nQUIT\r\n")
        rest = b""
        while chunk := sock.recv(65536):
            rest += chunk
        return batch, rest


async def test_pipelined_commands_are_answered_in_one_read(
    port: int, spool: FakeSpool
) -> None:
    batch, rest = await asyncio.to_thread(_pipelined_exchange, port)

    got = parse_replies(batch)
    assert got[:3] == [replies.SENDER_OK, replies.RECIPIENT_OK, replies.RECIPIENT_OK]
    assert status(got[3]) == "501 5.1.3"
    assert got[4] == replies.START_DATA
    assert [status(r) for r in parse_replies(rest)] == [QUEUED, "221 2.0.0"]
    ((envelope, _),) = spool.commits
    assert [r.address for r in envelope.recipients] == [
        "bob@example.net",
        "carol@example.net",
    ]


def _send_with_smtplib(port: int) -> dict[str, tuple[int, bytes]]:
    message = EmailMessage()
    message["From"] = "alice@example.org"
    message["To"] = "bob@example.net"
    message["Subject"] = "smtplib"
    message.set_content(".leading dot\nsecond line\n")
    with smtplib.SMTP(
        LOOPBACK, port, local_hostname="client.example.org", timeout=5
    ) as client:
        return client.send_message(
            message,
            mail_options=["RET=HDRS", "ENVID=env+2B1"],
            rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;bob+40example.net"],
        )


async def test_smtplib_send_with_dsn_parameters(port: int, spool: FakeSpool) -> None:
    refused = await asyncio.to_thread(_send_with_smtplib, port)

    assert refused == {}
    ((envelope, content),) = spool.commits
    assert (envelope.sender, envelope.ret, envelope.envid) == (
        "alice@example.org",
        "HDRS",
        "env+1",
    )
    (recipient,) = envelope.recipients
    assert recipient.notify == ("SUCCESS", "FAILURE")
    assert recipient.orcpt == "rfc822;bob@example.net"
    assert envelope.client_helo == "client.example.org"
    assert content.startswith(b"Received: from client.example.org ([127.0.0.1])")
    assert b"\r\n.leading dot\r\nsecond line\r\n" in content


async def test_spool_failure_is_a_temporary_refusal(tmp_path: Path) -> None:
    spool = FakeSpool(error=SpoolError("disk full"))
    async with running_server(make_config(tmp_path), spool) as server:
        client = await connect(server.bound_ports[0])
        await ehlo(client)
        await client.send(ENVELOPE + b"DATA\r\n")
        await client.read_replies(3)

        await client.send(b"hi\r\n.\r\n")
        assert await client.read_reply() == replies.TRANSACTION_FAILED

        # The session goes on.
        assert await client.command("NOOP") == replies.NOOP_OK
        await client.close()


# -- connection limits ---------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {"max_connections": 2, "max_connections_per_ip": 10},
        {"max_connections": 10, "max_connections_per_ip": 2},
    ],
    ids=["total", "per-ip"],
)
async def test_connection_limit(tmp_path: Path, settings: dict[str, int]) -> None:
    async with running_server(make_config(tmp_path, **settings)) as server:
        port = server.bound_ports[0]
        first, second = await connect(port), await connect(port)

        third = await SmtpClient.connect(port)
        assert await third.read_reply() == replies.TOO_MANY_CONNECTIONS
        assert await third.read_until_eof() == b""

        # A freed slot is given to the next client.
        await first.close()
        await _connect_when_admitted(port)
        await second.close()


async def _connect_when_admitted(port: int) -> SmtpClient:
    # The server frees a slot when it sees the close, a moment after ours.
    deadline = time.monotonic() + 5
    while True:
        client = await SmtpClient.connect(port)
        reply = await client.read_reply()
        if reply.code == 220:
            return client
        await client.close()
        assert time.monotonic() < deadline, "slot never freed"
        await asyncio.sleep(0.01)


# -- timeouts ---------------------------------------------------------------------


async def test_idle_timeout(tmp_path: Path) -> None:
    async with running_server(make_config(tmp_path, command_timeout=0.2)) as server:
        client = await connect(server.bound_ports[0])
        started = time.monotonic()

        assert await client.read_reply() == replies.TIMEOUT
        assert await client.read_until_eof() == b""
        assert 0.15 < time.monotonic() - started < 1.0


async def test_data_timeout_shorter_than_command_timeout(tmp_path: Path) -> None:
    config = make_config(tmp_path, command_timeout=1.5, data_timeout=0.2)
    async with running_server(config) as server:
        client = await connect(server.bound_ports[0])
        await ehlo(client)
        await client.send(ENVELOPE + b"DATA\r\n")
        await client.read_replies(3)
        await client.send(b"Subject: stalled\r\n")
        started = time.monotonic()

        assert await client.read_reply() == replies.TIMEOUT
        assert time.monotonic() - started < 1.0


# -- graceful shutdown -------------------------------------------------------------


async def test_stop_closes_idle_sessions_with_421(tmp_path: Path) -> None:
    async with running_server(make_config(tmp_path)) as server:
        port = server.bound_ports[0]
        client = await connect(port)
        await ehlo(client)

        await server.stop()

        assert await client.read_reply() == replies.SHUTTING_DOWN
        assert await client.read_until_eof() == b""
        with pytest.raises(OSError):
            await SmtpClient.connect(port)


async def test_stop_finishes_the_transaction_in_flight(
    tmp_path: Path, spool: FakeSpool
) -> None:
    async with running_server(make_config(tmp_path), spool) as server:
        client = await connect(server.bound_ports[0])
        await ehlo(client)
        await client.send(ENVELOPE)
        await client.read_replies(2)

        stopping = asyncio.create_task(server.stop())
        await asyncio.sleep(0.05)
        assert not stopping.done()

        await client.send(b"DATA\r\n")
        assert await client.read_reply() == replies.START_DATA
        await client.send(b"Subject: last one\r\n\r\nbye\r\n.\r\n")
        assert status(await client.read_reply()) == QUEUED
        assert await client.read_reply() == replies.SHUTTING_DOWN
        assert await client.read_until_eof() == b""
        await stopping
    assert len(spool.commits) == 1


async def test_stop_waits_for_a_message_being_stored(
    tmp_path: Path, spool: FakeSpool
) -> None:
    spool.gate.clear()
    async with running_server(make_config(tmp_path), spool) as server:
        client = await connect(server.bound_ports[0])
        await ehlo(client)
        await client.send(ENVELOPE + b"DATA\r\nSubject: slow\r\n\r\n.\r\n")
        await client.read_replies(3)
        await spool.entered.wait()

        stopping = asyncio.create_task(server.stop())
        await asyncio.sleep(0.05)
        spool.gate.set()

        assert status(await client.read_reply()) == QUEUED
        assert await client.read_reply() == replies.SHUTTING_DOWN
        await stopping
    assert len(spool.commits) == 1


async def test_stop_answers_new_commands_with_one_421(
    tmp_path: Path, spool: FakeSpool
) -> None:
    async with running_server(make_config(tmp_path), spool) as server:
        client = await connect(server.bound_ports[0])
        await ehlo(client)
        await client.send(ENVELOPE)
        await client.read_replies(2)
        stopping = asyncio.create_task(server.stop())
        await asyncio.sleep(0.05)

        await client.send(b"DATA\r\nhi\r\n.\r\n" + ENVELOPE)
        rest = parse_replies(await client.read_until_eof())
        await stopping

    assert [status(r) for r in rest] == ["354 ", QUEUED, "421 4.3.2"]


# -- half-close -------------------------------------------------------------------


async def test_half_close_after_quit(port: int) -> None:
    client = await connect(port)
    await client.send(b"QUIT\r\n")

    client.half_close()

    assert await client.read_until_eof() == replies.CLOSING.render()


async def test_half_close_after_pipelined_message(port: int, spool: FakeSpool) -> None:
    client = await connect(port)
    await client.send(
        b"EHLO client.example.org\r\n"
        + ENVELOPE
        + b"DATA\r\nSubject: fire and forget\r\n\r\n.\r\nQUIT\r\n"
    )

    client.half_close()

    got = parse_replies(await client.read_until_eof())
    assert [status(r) for r in got] == [
        "250 ",
        "250 2.1.0",
        "250 2.1.5",
        "354 ",
        QUEUED,
        "221 2.0.0",
    ]
    assert len(spool.commits) == 1


async def test_half_close_inside_data_loses_nothing_stored(
    port: int, spool: FakeSpool
) -> None:
    client = await connect(port)
    await client.send(b"EHLO client.example.org\r\n" + ENVELOPE + b"DATA\r\nhalf")

    client.half_close()

    assert len(parse_replies(await client.read_until_eof())) == 4
    assert spool.commits == []


# -- STARTTLS ---------------------------------------------------------------------


@pytest.fixture
def tls_config(tmp_path: Path) -> Config:
    return make_config(tmp_path)


@pytest.fixture
def client_tls() -> ssl.SSLContext:
    return tls.client_context(verify=False)


# XXX: a command sent the moment the handshake ends can be lost (always
# under TLS 1.3 in one event loop, now and then under TLS 1.2 with a
# thread), see test_first_command_after_tls_handshake. Clients below
# pause this long after STARTTLS; drop the pause once that is fixed.
HANDSHAKE_SETTLE = 0.1


async def test_first_command_after_tls_handshake(tls_config: Config) -> None:
    context = tls.client_context(verify=False)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    async with running_server(
        tls_config, tls_context=tls.server_context(tls_config)
    ) as server:
        client = await SmtpClient.connect(server.bound_ports[0], timeout=1.0)
        await client.read_reply()
        await ehlo(client)
        assert await client.command("STARTTLS") == replies.READY_TLS
        await client.starttls(context)

        try:
            await ehlo(client)
        finally:
            await client.close()


async def test_starttls_discards_pipelined_cleartext(
    tls_config: Config, client_tls: ssl.SSLContext, spool: FakeSpool
) -> None:
    # CVE-2011-0411 against the real server: MAIL and RCPT ride in the
    # STARTTLS packet and must not run inside the TLS session.
    authenticator = FakeAuthenticator()
    async with running_server(
        tls_config,
        spool,
        authenticator=authenticator,
        tls_context=tls.server_context(tls_config),
    ) as server:
        client = await connect(server.bound_ports[0])
        before = await ehlo(client)
        assert "STARTTLS" in before.lines and "AUTH PLAIN LOGIN" not in before.lines

        await client.send(b"STARTTLS\r\n" + ENVELOPE)
        assert await client.read_reply() == replies.READY_TLS
        await client.starttls(client_tls)
        await asyncio.sleep(HANDSHAKE_SETTLE)

        after = await ehlo(client)
        assert "STARTTLS" not in after.lines and "AUTH PLAIN LOGIN" in after.lines
        assert await client.command("RCPT TO:<bob@example.net>") == replies.NEED_MAIL

        # The session over TLS works, and the envelope says so.
        assert await client.command(PLAIN_ALICE) == replies.AUTH_OK
        await client.send(ENVELOPE + b"DATA\r\n")
        await client.read_replies(3)
        await client.send(b"Subject: secret\r\n\r\n.\r\n")
        assert status(await client.read_reply()) == QUEUED
        await client.close()

    ((envelope, content),) = spool.commits
    assert envelope.tls.startswith("TLSv1.")
    assert envelope.auth_user == "alice"
    assert b"with ESMTPSA id" in content


async def test_submissions_is_tls_from_the_first_byte(
    tmp_path: Path, client_tls: ssl.SSLContext, spool: FakeSpool
) -> None:
    config = make_config(tmp_path, listeners=f"submissions={LOOPBACK}:0")
    async with running_server(
        config,
        spool,
        authenticator=FakeAuthenticator(),
        tls_context=tls.server_context(config),
    ) as server:
        reader, writer = await asyncio.open_connection(
            LOOPBACK, server.bound_ports[0], ssl=client_tls, server_hostname="localhost"
        )
        client = SmtpClient(reader, writer, timeout=5)
        assert (await client.read_reply()).code == 220

        features = (await ehlo(client)).lines
        assert "STARTTLS" not in features
        assert {"AUTH PLAIN LOGIN", "REQUIRETLS"} <= set(features)
        assert await client.command(PLAIN_ALICE) == replies.AUTH_OK
        await client.send(ENVELOPE + b"DATA\r\n")
        await client.read_replies(3)
        await client.send(b"Subject: implicit\r\n\r\n.\r\n")
        assert status(await client.read_reply()) == QUEUED
        await client.close()

    ((envelope, _),) = spool.commits
    assert envelope.tls and envelope.listener.startswith("submissions:")


def _smtplib_starttls(port: int, context: ssl.SSLContext) -> list[str]:
    with smtplib.SMTP(
        LOOPBACK, port, local_hostname="client.example.org", timeout=5
    ) as client:
        client.starttls(context=context)
        time.sleep(HANDSHAKE_SETTLE)
        client.login("alice", "secret")
        client.sendmail(
            "alice@example.org",
            ["bob@example.net"],
            b"Subject: via smtplib\r\n\r\nhi\r\n",
        )
        return sorted(client.esmtp_features)


async def test_smtplib_starttls_and_login(
    tls_config: Config, client_tls: ssl.SSLContext, spool: FakeSpool
) -> None:
    async with running_server(
        tls_config,
        spool,
        authenticator=FakeAuthenticator(),
        tls_context=tls.server_context(tls_config),
    ) as server:
        features = await asyncio.to_thread(
            _smtplib_starttls, server.bound_ports[0], client_tls
        )

    assert "auth" in features and "starttls" not in features
    ((envelope, _),) = spool.commits
    assert envelope.auth_user == "alice"


# -- AUTH -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def auth_session(
    tmp_path: Path, authenticator: FakeAuthenticator, **settings: object
) -> AsyncIterator[SmtpClient]:
    """A client past EHLO on a relay listener that offers AUTH in clear."""
    config = make_config(tmp_path, auth_without_tls=True, **settings)
    async with running_server(config, authenticator=authenticator) as server:
        client = await connect(server.bound_ports[0])
        await ehlo(client)
        yield client
        await client.close()


@pytest.fixture
async def authed(tmp_path: Path) -> AsyncIterator[SmtpClient]:
    async with auth_session(tmp_path, FakeAuthenticator()) as client:
        yield client


async def test_auth_plain(authed: SmtpClient) -> None:
    assert await authed.command(PLAIN_ALICE) == replies.AUTH_OK


async def test_auth_plain_with_empty_challenge(authed: SmtpClient) -> None:
    assert await authed.command("AUTH PLAIN") == Reply.of(334, "", "")
    assert await authed.command(PLAIN_ALICE.split()[-1]) == replies.AUTH_OK


async def test_auth_login(authed: SmtpClient) -> None:
    assert (await authed.command("AUTH LOGIN")).lines == ("VXNlcm5hbWU6",)
    assert (await authed.command("YWxpY2U=")).lines == ("UGFzc3dvcmQ6",)
    assert await authed.command("c2VjcmV0") == replies.AUTH_OK


async def test_auth_failures_slow_down(tmp_path: Path) -> None:
    authenticator = FakeAuthenticator()
    delay = 0.05
    async with auth_session(
        tmp_path, authenticator, auth_failure_delay=delay, auth_max_failures=5
    ) as client:
        took = []
        for _ in range(3):
            started = time.monotonic()
            assert await client.command(PLAIN_WRONG) == replies.AUTH_FAILED
            took.append(time.monotonic() - started)

        # 1, 2, 4 times the delay.
        assert took[0] >= delay and took[1] >= 2 * delay and took[2] >= 4 * delay
        assert await client.command(PLAIN_ALICE) == replies.AUTH_OK
    assert authenticator.tried == ["alice"] * 4


async def test_auth_too_many_failures_closes(tmp_path: Path) -> None:
    async with auth_session(
        tmp_path, FakeAuthenticator(), auth_max_failures=2
    ) as client:
        assert await client.command(PLAIN_WRONG) == replies.AUTH_FAILED
        assert await client.command(PLAIN_WRONG) == replies.AUTH_FAILED
        assert await client.read_reply() == replies.TOO_MANY_AUTH_FAILURES
        assert await client.read_until_eof() == b""


async def test_auth_unavailable_is_454(tmp_path: Path) -> None:
    broken = FakeAuthenticator(error=AuthError("user database unavailable"))
    async with auth_session(tmp_path, broken) as client:
        assert status(await client.command(PLAIN_ALICE)) == TEMPORARY_AUTH_FAILURE


async def test_submission_needs_auth(tmp_path: Path, spool: FakeSpool) -> None:
    config = make_config(
        tmp_path, auth_without_tls=True, listeners=f"submission={LOOPBACK}:0"
    )
    async with running_server(config, spool, authenticator=FakeAuthenticator()) as s:
        client = await connect(s.bound_ports[0])
        await ehlo(client)

        assert status(await client.command("MAIL FROM:<alice@example.org>")) == (
            "530 5.7.0"
        )
        assert await client.command(PLAIN_ALICE) == replies.AUTH_OK
        assert await client.command("MAIL FROM:<alice@example.org>") == (
            replies.SENDER_OK
        )
        assert await client.command("RCPT TO:<anyone@example.com>") == (
            replies.RECIPIENT_OK
        )
        await client.close()


async def test_a_forwarding_loop_is_refused(port: int, spool: FakeSpool) -> None:
    # RFC 5321 §6.3: more than 100 Received fields is a loop. Aliases
    # that forward (#4) make one possible between two hosts, and without
    # a limit the message would circle for ever.
    trace = b"Received: from a.example by b.example; Mon, 2 Mar 2026\r\n"
    client = await connect(port)
    await ehlo(client)
    answers = []
    for hops in (101, 100):
        await client.send(ENVELOPE + b"DATA\r\n")
        await client.read_replies(3)
        await client.send(trace * hops + b"Subject: loop\r\n\r\nhi\r\n.\r\n")
        answers.append(status(await client.read_reply()))
    await client.close()

    assert answers == ["554 5.4.6", QUEUED]
    # With our own Received field the next hop sees 101, and refuses.
    ((_envelope, content),) = spool.commits
    assert received.too_many_hops(content)
