"""The POP3 server in-process: timeouts, limits, shutdown, flow control.

A ``Pop3Server`` on an ephemeral loopback port with a real ``MailStore``
under tmp_path and an authenticator that knows one password, so no
scrypt runs; clients are asyncio streams.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from postroom.config import Config, Listener
from postroom.mailbox.store import MailStore
from postroom.protocol.pop3 import responses
from postroom.server.pop3d import Pop3Server

USER = "alice@postroom.test"
PASSWORD = "pw"


class OnePassword:
    async def verify(self, username: str, password: str) -> bool:
        return username.lower() == USER and password == PASSWORD


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    async def line(self) -> bytes:
        return await asyncio.wait_for(self.reader.readline(), 5.0)

    async def command(self, text: str) -> bytes:
        self.writer.write(text.encode() + b"\r\n")
        return await self.line()

    async def login(self) -> bytes:
        await self.command(f"USER {USER}")
        return await self.command(f"PASS {PASSWORD}")

    async def multiline(self) -> bytes:
        """The rest of a multi-line answer (not empty), still stuffed."""
        return await asyncio.wait_for(self.reader.readuntil(b"\r\n.\r\n"), 5.0)

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
def store(tmp_path: Path) -> MailStore:
    return MailStore(tmp_path / "mailboxes", fsync=False)


@pytest.fixture
def config() -> Config:
    config = Config()
    config.pop3.listeners = [Listener("pop3", "127.0.0.1", 0)]
    config.pop3.auth_failure_delay = 0.01
    config.smtp.shutdown_grace = 2.0
    return config


@pytest.fixture
async def server(config: Config, store: MailStore) -> AsyncIterator[Pop3Server]:
    pop3 = Pop3Server(config, store, OnePassword())  # type: ignore[arg-type]
    await pop3.start()
    yield pop3
    await pop3.stop()


async def connect(server: Pop3Server) -> Client:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", server.bound_ports[0], limit=1 << 24
    )
    client = Client(reader, writer)
    assert (await client.line()).startswith(b"+OK")
    return client


def fill(store: MailStore, *messages: bytes) -> None:
    with store.open(USER) as inbox:
        for data in messages:
            inbox.append(data)


def count(store: MailStore) -> int:
    with store.open(USER) as inbox:
        return len(inbox.messages())


async def test_idle_timeout_closes_silently_and_removes_nothing(
    config: Config, server: Pop3Server, store: MailStore
) -> None:
    config.pop3.idle_timeout = 0.3
    fill(store, b"Subject: x\r\n\r\nx\r\n")
    client = await connect(server)
    await client.login()
    assert await client.command("DELE 1") == b"+OK message 1 deleted\r\n"

    # RFC 1939 §3: the autologout timer ends the session without a
    # response and without entering the UPDATE state.
    assert await asyncio.wait_for(client.reader.read(), 5.0) == b""
    assert count(store) == 1


async def test_per_ip_limit(config: Config, server: Pop3Server) -> None:
    server.max_per_ip = 1
    first = await connect(server)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.bound_ports[0])

    refused = await asyncio.wait_for(reader.readline(), 5.0)

    assert refused == responses.TOO_MANY_CONNECTIONS.wire
    assert await asyncio.wait_for(reader.read(), 5.0) == b""
    first.close()
    writer.close()


async def test_shutdown_closes_sessions_without_removing(
    server: Pop3Server, store: MailStore
) -> None:
    fill(store, b"Subject: x\r\n\r\nx\r\n")
    client = await connect(server)
    await client.login()
    await client.command("DELE 1")

    await server.stop()

    assert await client.line() == responses.SHUTTING_DOWN.wire
    assert count(store) == 1


async def test_too_many_auth_failures_closes(server: Pop3Server) -> None:
    client = await connect(server)
    answers = []
    for _ in range(3):
        await client.command(f"USER {USER}")
        answers.append(await client.command("PASS wrong"))

    assert answers == [responses.AUTH_FAILED.wire] * 3
    assert await client.line() == responses.TOO_MANY_AUTH_FAILURES.wire
    assert await asyncio.wait_for(client.reader.read(), 5.0) == b""


async def test_pipelined_retr_of_a_big_maildrop_with_a_slow_reader(
    server: Pop3Server, store: MailStore
) -> None:
    # 60 messages of 200 KiB: 12 MiB answered to one pipelined write.
    # The client reads nothing for a while, so the server must stop
    # answering (write flow control) rather than buffer it all.
    messages = [
        b"Subject: %d\r\n\r\n" % n + (b"%d line\r\n" % n) * 25_000 for n in range(60)
    ]
    fill(store, *messages)
    client = await connect(server)
    await client.login()

    client.writer.transport.pause_reading()  # type: ignore[attr-defined]
    client.writer.write(
        b"".join(b"RETR %d\r\n" % n for n in range(1, 61)) + b"QUIT\r\n"
    )
    await asyncio.sleep(0.5)
    [session] = server.sessions
    assert session.transport is not None
    assert session.transport.get_write_buffer_size() < 2 * 1024 * 1024
    client.writer.transport.resume_reading()  # type: ignore[attr-defined]

    got = []
    for data in messages:
        assert await client.line() == b"+OK %d octets\r\n" % len(data)
        got.append((await client.multiline())[: -len(b".\r\n")])
    assert got == messages
    assert (await client.line()).startswith(b"+OK Postroom POP3 server signing off")


async def test_garbage_never_kills_the_server(server: Pop3Server) -> None:
    client = await connect(server)
    client.writer.write(bytes(range(256)) * 4 + b"\r\n" + b"\xff" * 3000 + b"\n")
    answers = [await client.line() for _ in range(2)]
    client.close()

    second = await connect(server)
    assert await second.command("CAPA") == responses.CAPABILITIES.wire
    second.close()
    assert all(a.startswith(b"-ERR") for a in answers)


async def test_update_removes_marked_messages(
    server: Pop3Server, store: MailStore
) -> None:
    fill(store, b"Subject: 1\r\n\r\n1\r\n", b"Subject: 2\r\n\r\n2\r\n")
    client = await connect(server)
    await client.login()
    await client.command("DELE 2")

    bye = await client.command("QUIT")

    assert bye == b"+OK Postroom POP3 server signing off (1 messages left)\r\n"
    with store.open(USER) as inbox:
        [left] = inbox.messages()
        assert inbox.read(left.uid) == b"Subject: 1\r\n\r\n1\r\n"


async def test_quit_marks_downloaded_messages_seen(
    server: Pop3Server, store: MailStore
) -> None:
    fill(store, *(b"Subject: %d\r\n\r\n%d\r\n" % (n, n) for n in range(1, 5)))
    client = await connect(server)
    await client.login()
    for command in ("RETR 1", "TOP 2 0", "RETR 3", "DELE 3"):
        assert (await client.command(command)).startswith(b"+OK")
        if not command.startswith("DELE"):
            await client.multiline()

    await client.command("QUIT")

    # RETR'd and kept: \Seen (as Dovecot does at QUIT); TOP is only a
    # peek; the deleted one is gone.
    with store.open(USER) as inbox:
        seen = {m.uid: "\\Seen" in m.flags for m in inbox.messages()}
    assert list(seen.values()) == [True, False, False]


async def test_quit_then_hang_up_still_updates(
    server: Pop3Server, store: MailStore
) -> None:
    fill(store, b"Subject: 1\r\n\r\n1\r\n", b"Subject: 2\r\n\r\n2\r\n")
    client = await connect(server)
    await client.login()

    # Many clients do not wait for QUIT's answer (RFC 1939 §6: the
    # QUIT was received, so the UPDATE state happens anyway).
    client.writer.write(b"DELE 1\r\nQUIT\r\n")
    client.writer.transport.abort()  # type: ignore[attr-defined]

    for _ in range(100):
        if count(store) == 1 and not server.sessions:
            break
        await asyncio.sleep(0.02)
    assert count(store) == 1
    # The lock went with it: a new session gets in.
    again = await connect(server)
    assert (await again.login()).startswith(b"+OK maildrop has 1 messages")
    again.close()


async def test_connection_lost_before_the_update_starts(
    server: Pop3Server, store: MailStore
) -> None:
    # QUIT is answered by a task; the connection may be lost (a reset
    # seen while writing DELE's +OK) before that task first runs. The
    # maildrop must still be there for it, and the deletion happen.
    fill(store, b"Subject: 1\r\n\r\n1\r\n", b"Subject: 2\r\n\r\n2\r\n")
    client = await connect(server)
    await client.login()
    [session] = server.sessions
    transport = session.transport
    assert transport is not None

    session.data_received(b"DELE 1\r\nQUIT\r\n")
    session.connection_lost(ConnectionResetError())
    transport.abort()

    for _ in range(100):
        if count(store) == 1:
            break
        await asyncio.sleep(0.02)
    assert count(store) == 1
    client.close()
