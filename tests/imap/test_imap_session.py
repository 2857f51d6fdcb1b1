"""The IMAP session driver in-process: ``ImapServer`` on a loopback
port, a stream client, a fake authenticator, and a MailStore in
``tmp_path``. For what a subprocess hides: shutdown while a command is
being answered, a client that does not read, and our own bugs.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from postroom import config as config_mod
from postroom.config import Listener
from postroom.mailbox.store import MailStore
from postroom.server import imap_mailbox
from postroom.server.imapd import ImapServer

USER = "alice@example.org"


class Accepting:
    """An authenticator that takes one password."""

    async def verify(self, username: str, password: str) -> bool:
        return password == "secret"


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    async def line(self) -> bytes:
        return await asyncio.wait_for(self.reader.readline(), 10)

    async def command(self, text: bytes) -> list[bytes]:
        tag = text.split(b" ", 1)[0]
        self.writer.write(text + b"\r\n")
        out = []
        while True:
            got = await self.line()
            assert got, out
            out.append(got)
            if got.startswith((tag + b" ", b"* BYE")):
                return out


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ImapServer]:
    config = config_mod.load(environ={})
    config.imap.listeners = [Listener("imap", "127.0.0.1", 0)]
    config.smtp.shutdown_grace = 5.0
    store = MailStore(tmp_path / "mailboxes", fsync=False)
    with store.open(USER) as inbox:
        for n in range(200):
            inbox.append(b"Subject: %d\r\n\r\n" % n + b"x" * 20_000 + b"\r\n")
    imap = ImapServer(config, store, Accepting())  # type: ignore[arg-type]
    await imap.start()
    yield imap
    await imap.stop()


async def connect(
    server: ImapServer, *, login: bool = True, rcvbuf: int | None = None
) -> Client:
    """A logged-in client; with *rcvbuf*, one whose kernel buffers
    little (a fixed SO_RCVBUF turns off the growth of its window), and
    so does our side of it: a client that does not read then makes our
    writes wait soon, not after the megabytes loopback buffers hold."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(
        sock, ("127.0.0.1", server.bound_ports[0])
    )
    reader, writer = await asyncio.open_connection(sock=sock)
    client = Client(reader, writer)
    assert (await client.line()).startswith(b"* OK")
    if login:
        answer = await client.command(f"a LOGIN {USER} secret".encode())
        assert answer[-1].startswith(b"a OK"), answer
    if rcvbuf is not None:
        [session] = server.sessions
        assert session.transport is not None
        ours = session.transport.get_extra_info("socket")
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, rcvbuf)
    return client


async def test_a_client_that_does_not_read_is_not_buffered_without_end(
    server: ImapServer,
) -> None:
    client = await connect(server, rcvbuf=64 * 1024)
    await client.command(b"s SELECT INBOX")

    # Ask for 4 MB and read nothing for a while: the server must hold
    # still (write flow control), then deliver everything.
    client.writer.write(b"f UID FETCH 1:* (BODY.PEEK[])\r\nn NOOP\r\n")
    await asyncio.sleep(0.5)
    [session] = server.sessions
    paused = session._write_paused
    got = b""
    while b"n OK" not in got:
        got += await asyncio.wait_for(client.reader.read(1 << 20), 10)
    client.writer.close()

    assert paused
    assert got.count(b" FETCH (") == 200
    assert b"f OK" in got


def held_by(server: ImapServer) -> int:
    """Octets the one session holds for its client: the transport's
    buffer plus what the core rendered and nobody took yet."""
    [session] = server.sessions
    assert session.transport is not None and session.core is not None
    pending = sum(len(c) for c in session.core._out)
    return session.transport.get_write_buffer_size() + pending


async def test_a_bulk_fetch_to_a_slow_reader_streams_in_bounded_memory(
    server: ImapServer,
) -> None:
    client = await connect(server, rcvbuf=64 * 1024)
    await client.command(b"s SELECT INBOX")

    # 4 MB asked for, read 64 KB at a time with pauses: the server
    # renders as the client reads, never the whole response at once.
    client.writer.write(b"f UID FETCH 1:* (UID FLAGS BODY.PEEK[])\r\n")
    got = b""
    most = 0
    streamed = False
    while b"f OK" not in got:
        await asyncio.sleep(0.002)
        [session] = server.sessions
        streamed = streamed or (session.core is not None and session.core.streaming)
        most = max(most, held_by(server))
        got += await asyncio.wait_for(client.reader.read(64 * 1024), 10)
    client.writer.close()

    assert streamed
    assert most < 1024 * 1024, most
    assert got.count(b" FETCH (") == 200
    assert got.endswith(b"f OK UID FETCH completed\r\n")


async def test_a_client_gone_in_the_middle_of_a_bulk_fetch(
    server: ImapServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="postroom.server.imap_session")
    client = await connect(server, rcvbuf=64 * 1024)
    await client.command(b"s SELECT INBOX")
    client.writer.write(b"f UID FETCH 1:* (BODY.PEEK[])\r\n")
    got = b""
    while len(got) < 200_000:
        got += await asyncio.wait_for(client.reader.read(64 * 1024), 10)
    [session] = server.sessions
    assert session.core is not None and session.core.streaming
    client.writer.transport.abort()  # A reset, in the middle of a message.

    for _ in range(500):
        if not server.sessions:
            break
        await asyncio.sleep(0.01)
    other = await connect(server)
    answer = await other.command(b"n NOOP")

    # The session ended (no write into a dead transport, no stream
    # left running); the server goes on with others.
    assert session not in server.sessions and session.transport is None
    assert answer[-1].startswith(b"n OK")
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert any("disconnect" in r.getMessage() for r in caplog.records)


async def test_a_file_that_fails_to_load_mid_stream_ends_that_session(
    server: ImapServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_loader = imap_mailbox._loader

    def loader(mailbox: object, uid: int, size: int) -> object:
        if uid == 150:

            def fail() -> bytes:
                raise PermissionError("not ours")

            return fail
        return real_loader(mailbox, uid, size)  # type: ignore[arg-type]

    monkeypatch.setattr(imap_mailbox, "_loader", loader)
    client = await connect(server)
    await client.command(b"s SELECT INBOX")
    answer = await client.command(b"f UID FETCH 1:* (UID BODY.PEEK[])")
    bystander = await connect(server)
    other = await bystander.command(b"n NOOP")

    # The responses before the failure are whole; then BYE, no OK.
    assert answer[-1] == b"* BYE [SERVERBUG] Internal error\r\n"
    assert sum(line.startswith(b"* ") and b" FETCH (" in line for line in answer) == 149
    assert other[-1].startswith(b"n OK")


async def test_shutdown_lets_a_streaming_fetch_finish(server: ImapServer) -> None:
    client = await connect(server, rcvbuf=64 * 1024)
    await client.command(b"s SELECT INBOX")
    client.writer.write(b"f UID FETCH 1:* (BODY.PEEK[])\r\n")
    got = await asyncio.wait_for(client.reader.read(64 * 1024), 10)
    [session] = server.sessions
    assert session.core is not None and session.core.streaming

    stopping = asyncio.ensure_future(server.stop())
    while not got.endswith(b"* BYE [UNAVAILABLE] Server shutting down\r\n"):
        more = await asyncio.wait_for(client.reader.read(64 * 1024), 10)
        assert more, got[-200:]
        got += more
    await stopping

    # The response ends whole, tagged OK included, and then BYE.
    assert got.count(b" FETCH (") == 200
    assert b"f OK UID FETCH completed\r\n* BYE " in got


async def test_shutdown_waits_for_the_command_being_answered(
    server: ImapServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await connect(server)
    original = imap_mailbox.ImapMailboxes._append
    started = asyncio.Event()
    loop = asyncio.get_running_loop()

    def slow_append(self: imap_mailbox.ImapMailboxes, event: object) -> object:
        loop.call_soon_threadsafe(started.set)
        time.sleep(0.5)  # In the worker thread, as storage calls run.
        return original(self, event)  # type: ignore[arg-type]

    monkeypatch.setitem(
        imap_mailbox._HANDLERS,
        imap_mailbox.ev.Append,
        slow_append,  # type: ignore[dict-item]
    )
    client.writer.write(b"p APPEND INBOX {9+}\r\nSubject:\r\n\r\n")
    await started.wait()
    stopping = asyncio.ensure_future(server.stop())
    answer = [await client.line(), await client.line()]
    await stopping

    assert answer[0].startswith(b"p OK [APPENDUID ")
    assert answer[1] == b"* BYE [UNAVAILABLE] Server shutting down\r\n"


async def test_our_own_bug_ends_that_session_only(
    server: ImapServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: object, event: object) -> object:
        raise RuntimeError("bug")

    monkeypatch.setitem(
        imap_mailbox._HANDLERS,
        imap_mailbox.ev.Status,
        broken,  # type: ignore[dict-item]
    )
    victim = await connect(server)
    bystander = await connect(server)

    answer = await victim.command(b"x STATUS INBOX (MESSAGES)")
    other = await bystander.command(b"y SELECT INBOX")

    assert answer[-1] == b"* BYE [SERVERBUG] Internal error\r\n"
    assert other[-1].startswith(b"y OK")
