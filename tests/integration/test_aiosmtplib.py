"""asyncio clients against a real ``postroom serve``: aiosmtplib, and
a hand-driven stream for PIPELINING.

aiosmtplib sends one command at a time and waits for each reply (it
has no PIPELINING support, as docs/ARCHITECTURE notes), so the
pipelining tests below write whole batches with asyncio streams and
read the replies back in order, the way RFC 2920 clients such as
Postfix's smtp do.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from email.message import EmailMessage

import aiosmtplib
import pytest

from postroom.protocol.smtp import replies
from postroom.server import policy
from postroom.testing.process import (
    LOOPBACK,
    PostroomProcess,
    queued_as,
    split_received,
)

USER = "carol@postroom.test"
PASSWORD = "pa55 with spaces"


@pytest.fixture(scope="module")
def server(
    module_postroom_factory: Callable[..., PostroomProcess],
) -> PostroomProcess:
    node = module_postroom_factory(start=False)
    node.add_user(USER, PASSWORD)
    return node.start()


def contents(server: PostroomProcess, queue_ids: list[str]) -> list[bytes]:
    """The messages as the clients sent them, Received header removed."""
    with server.queue() as queue:
        return [split_received(queue.read_content(q))[1] for q in queue_ids]


def message(n: int) -> bytes:
    return (f"Subject: message {n}\r\nMessage-ID: <{n}.{uuid.uuid4().hex}"
            f"@client.test>\r\n\r\nbody {n}\r\n.leading dot\r\n").encode()


# -- aiosmtplib ---------------------------------------------------------------


async def test_starttls_and_login_on_submission(
        server: PostroomProcess) -> None:
    # aiosmtplib's own sequence: EHLO, STARTTLS (it is advertised), EHLO
    # at once after the handshake, AUTH; certificate verified.
    mail = EmailMessage()
    mail["From"] = USER
    mail["To"] = "dave@other.test"
    mail["Subject"] = "from aiosmtplib"
    mail.set_content("Hello over STARTTLS.\n")

    async with aiosmtplib.SMTP(
            hostname=LOOPBACK, port=server.submission_port,
            tls_context=server.client_context(), local_hostname="client.test",
            username=USER, password=PASSWORD, timeout=10) as client:
        assert client.get_transport_info("sslcontext") is not None
        errors, text = await client.send_message(mail)

    assert errors == {}
    queue_id = queued_as(text)
    with server.queue() as queue:
        envelope, _ = queue.get(queue_id)
        content = queue.read_content(queue_id)
    assert envelope.auth_user == USER
    assert envelope.tls.startswith("TLSv1.")
    assert b"Hello over STARTTLS." in content
    assert b" with ESMTPSA id " in split_received(content)[0]


async def test_starttls_many_times(server: PostroomProcess) -> None:
    # The first command after the handshake used to be lost now and
    # then (the STARTTLS race; its regression test is in test_smtplib);
    # twenty sessions in a row would all but surely have hit it.
    async def session() -> None:
        async with aiosmtplib.SMTP(
                hostname=LOOPBACK, port=server.submission_port,
                tls_context=server.client_context(), timeout=5) as client:
            await client.login(USER, PASSWORD)

    for _ in range(20):
        await session()


async def test_login_over_implicit_tls(server: PostroomProcess) -> None:
    async with aiosmtplib.SMTP(
            hostname=LOOPBACK, port=server.submissions_port, use_tls=True,
            tls_context=server.client_context(), username=USER,
            password=PASSWORD, timeout=10) as client:
        _, text = await client.sendmail(
            USER, ["dave@other.test"], message(0))

    with server.queue() as queue:
        assert queue.get(queued_as(text))[0].auth_user == USER


async def test_wrong_password(server: PostroomProcess) -> None:
    client = aiosmtplib.SMTP(
        hostname=LOOPBACK, port=server.submissions_port, use_tls=True,
        tls_context=server.client_context(), timeout=10)
    async with client:
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as refused:
            await client.login(USER, "not it")

    assert refused.value.code == replies.AUTH_FAILED.code


async def test_many_messages_over_one_connection(
        server: PostroomProcess) -> None:
    sent = [message(n) for n in range(100)]
    queue_ids = []

    async with aiosmtplib.SMTP(hostname=LOOPBACK, port=server.relay_port,
                               start_tls=False, timeout=10) as client:
        for body in sent:
            errors, text = await client.sendmail(
                "bulk@client.test", ["r1@other.test", "r2@other.test"], body)
            assert errors == {}
            queue_ids.append(queued_as(text))

    assert len(set(queue_ids)) == len(sent)
    assert contents(server, queue_ids) == sent


async def test_concurrent_clients(server: PostroomProcess) -> None:
    async def one_client(c: int) -> list[tuple[str, bytes]]:
        done = []
        async with aiosmtplib.SMTP(hostname=LOOPBACK, port=server.relay_port,
                                   start_tls=False, timeout=15) as client:
            for n in range(20):
                body = message(c * 1000 + n)
                _, text = await client.sendmail(
                    f"c{c}@client.test", ["r@other.test"], body)
                done.append((queued_as(text), body))
        return done

    results = await asyncio.gather(*(one_client(c) for c in range(10)))

    pairs = [pair for result in results for pair in result]
    queue_ids = [queue_id for queue_id, _ in pairs]
    assert len(set(queue_ids)) == 200
    assert contents(server, queue_ids) == [body for _, body in pairs]


# -- PIPELINING by hand (RFC 2920) -------------------------------------------


class Stream:
    """An SMTP client connection that writes batches and reads replies."""

    def __init__(self, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Stream:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        return cls(reader, writer)

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    async def reply(self) -> tuple[int, list[bytes]]:
        """One reply: its code and the text of each line."""
        lines = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), 10)
            assert line.endswith(b"\r\n"), line
            lines.append(line[4:-2])
            if line[3:4] == b" ":
                return int(line[:3]), lines

    async def replies(self, count: int) -> list[bytes]:
        """``count`` one-line replies, rendered back to their wire form."""
        out = []
        for _ in range(count):
            code, lines = await self.reply()
            out.append(b"".join(b"%d %s\r\n" % (code, line)
                                for line in lines))
        return out

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def test_pipelined_transaction(server: PostroomProcess) -> None:
    first = b"Subject: pipelined\r\n\r\none\r\n"
    second = b"Subject: greedy\r\n\r\ntwo\r\n..stuffed\r\n"
    stream = await Stream.open(server.relay_port)
    try:
        assert (await stream.reply())[0] == 220
        stream.write(b"EHLO client.test\r\n")
        code, lines = await stream.reply()
        assert code == 250 and b"PIPELINING" in lines

        # MAIL, the RCPTs and DATA in one write; one RCPT is refused and
        # the others are not held up by it.
        stream.write(b"MAIL FROM:<p@client.test>\r\n"
                     b"RCPT TO:<one@other.test>\r\n"
                     b"RCPT TO:<x%y@postroom.test>\r\n"
                     b"RCPT TO:<two@other.test>\r\n"
                     b"DATA\r\n")
        assert await stream.replies(5) == [
            replies.SENDER_OK.render(), replies.RECIPIENT_OK.render(),
            policy.ROUTING_IN_LOCAL_PART.render(),
            replies.RECIPIENT_OK.render(), replies.START_DATA.render()]
        stream.write(first + b".\r\n")
        first_id = queued_as((await stream.replies(1))[0])

        # A greedy client: the next transaction whole, content and QUIT
        # included, in one write. The server must find each command and
        # the end of data in what is already buffered.
        stream.write(b"RSET\r\nMAIL FROM:<p@client.test>\r\n"
                     b"RCPT TO:<three@other.test>\r\nDATA\r\n"
                     + second.replace(b"\r\n..", b"\r\n...")
                     + b".\r\nQUIT\r\n")
        answers = await stream.replies(6)
        assert answers[:4] == [
            replies.RESET_OK.render(), replies.SENDER_OK.render(),
            replies.RECIPIENT_OK.render(), replies.START_DATA.render()]
        second_id = queued_as(answers[4])
        assert answers[5] == replies.CLOSING.render()
        assert await stream.reader.read() == b""
    finally:
        await stream.close()

    assert contents(server, [first_id, second_id]) == [first, second]
    with server.queue() as queue:
        envelope, _ = queue.get(first_id)
    assert [r.address for r in envelope.recipients] == [
        "one@other.test", "two@other.test"]


async def test_pipelined_batch_in_tiny_writes(
        server: PostroomProcess) -> None:
    # A batch written one octet at a time (TCP may still merge some): the
    # server must not care where TCP cuts them.
    body = b"Subject: trickle\r\n\r\n.\r\n"
    batch = (b"EHLO client.test\r\nMAIL FROM:<t@client.test>\r\n"
             b"RCPT TO:<t@other.test>\r\nDATA\r\n"
             + body.replace(b"\r\n.", b"\r\n..") + b".\r\nQUIT\r\n")
    stream = await Stream.open(server.relay_port)
    try:
        await stream.reply()
        for start in range(0, len(batch), 7):
            for offset in range(start, min(start + 7, len(batch))):
                stream.write(batch[offset:offset + 1])
            await stream.writer.drain()
            await asyncio.sleep(0)
        codes = [(await stream.reply()) for _ in range(6)]
    finally:
        await stream.close()

    assert [code for code, _ in codes] == [250, 250, 250, 354, 250, 221]
    queue_id = queued_as(codes[4][1][0])
    assert contents(server, [queue_id]) == [body]
