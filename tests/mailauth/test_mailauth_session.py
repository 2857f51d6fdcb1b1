"""Mail authentication in a real SMTP session (in-process server).

The client connects from ``CLIENT_IP`` (127.0.0.7), which is outside
``trusted_networks`` (127.0.0.1/32 here): a stranger, whose mail the
relay listener checks. The sender domains' SPF records name that
address, so SPF sees the real source address of the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from postroom.protocol.smtp import replies
from postroom.testing.dns import TestDnsServer
from postroom.testing.mailauth import CLIENT_IP, DNS_TIMEOUT, SigningKey, message
from postroom.testing.smtp import (
    LOOPBACK,
    FakeSpool,
    SmtpClient,
    make_config,
    running_server,
)

HOSTNAME = "mx.postroom.test"


@contextlib.asynccontextmanager
async def node(
    tmp_path: Path, dns: TestDnsServer, **mailauth: Any
) -> AsyncIterator[tuple[int, FakeSpool]]:
    config = make_config(
        tmp_path, trusted_networks=["127.0.0.1/32"], local_domains=["postroom.test"]
    )
    config.hostname = HOSTNAME
    config.mailauth.nameservers = [dns.address]
    config.delivery.dns_timeout = DNS_TIMEOUT
    for name, value in mailauth.items():
        setattr(config.mailauth, name, value)
    spool = FakeSpool()
    async with running_server(config, spool) as server:
        yield server.bound_ports[0], spool


async def connect(port: int, source: str = CLIENT_IP) -> SmtpClient:
    reader, writer = await asyncio.open_connection(
        LOOPBACK, port, local_addr=(source, 0)
    )
    client = SmtpClient(reader, writer, timeout=10.0)
    assert (await client.read_reply()).code == 220
    assert (await client.command("EHLO client.test")).code == 250
    return client


async def send(
    client: SmtpClient, sender: str, content: bytes, rcpt: str = "bob@postroom.test"
) -> replies.Reply:
    assert await client.command(f"MAIL FROM:<{sender}>") == replies.SENDER_OK
    assert await client.command(f"RCPT TO:<{rcpt}>") == replies.RECIPIENT_OK
    assert (await client.command("DATA")).code == 354
    await client.send(content + b".\r\n")
    return await client.read_reply()


async def test_a_strangers_message_gets_our_verdict(
    tmp_path: Path, dns: TestDnsServer, caplog: pytest.LogCaptureFixture
) -> None:
    key = SigningKey("pass.test", "s1")
    dns.set(key.dns_name, "TXT", [key.txt])
    forged = message(extra="Authentication-Results: mx.postroom.test; spf=pass\r\n")
    caplog.set_level(logging.INFO, "postroom")

    async with node(tmp_path, dns) as (port, spool):
        client = await connect(port)
        reply = await send(client, "bounce@pass.test", key.sign(forged))
        await client.close()

    assert reply.code == 250
    ((envelope, content),) = spool.commits
    lines = content.split(b"\r\n")
    # Our Received first, then our verdict, then the message as sent
    # minus the field that forged our name.
    assert lines[0].startswith(b"Received: from client.test ([127.0.0.7])")
    start = content.index(b"Authentication-Results: mx.postroom.test;\r\n")
    assert content.count(b"Authentication-Results") == 1
    assert content.index(b"Received:") < start < content.index(b"DKIM-Signature")
    assert b"\tspf=pass (127.0.0.7 is allowed by pass.test)" in content
    assert b"\tdkim=pass header.d=pass.test" in content
    assert b"\tdmarc=pass" in content
    assert envelope.auth_results is not None
    assert envelope.auth_results["dmarc"] == "pass"
    auth_lines = [r.getMessage() for r in caplog.records if ": auth " in r.getMessage()]
    assert len(auth_lines) == 1
    assert auth_lines[0].startswith(f"{envelope.queue_id}: auth ")
    assert "spf=pass" in auth_lines[0] and "dkim=pass" in auth_lines[0]
    assert "removed=1" in auth_lines[0]


async def test_a_trusted_client_is_not_checked(
    tmp_path: Path, dns: TestDnsServer
) -> None:
    async with node(tmp_path, dns) as (port, spool):
        client = await connect(port, source=LOOPBACK)
        reply = await send(client, "ceo@reject.test", message("ceo@reject.test"))
        await client.close()

    assert reply.code == 250
    ((envelope, content),) = spool.commits
    assert b"Authentication-Results" not in content
    assert envelope.auth_results is None
    assert dns.queries("reject.test") == 0


async def test_checks_off(tmp_path: Path, dns: TestDnsServer) -> None:
    async with node(tmp_path, dns, enabled=False) as (port, spool):
        client = await connect(port)
        reply = await send(client, "ceo@reject.test", message("ceo@reject.test"))
        await client.close()

    assert reply.code == 250
    assert b"Authentication-Results" not in spool.contents[0]
    assert dns.query_log == []


async def test_dmarc_reject_refused_and_the_session_goes_on(
    tmp_path: Path, dns: TestDnsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "postroom")

    async with node(tmp_path, dns, reject_dmarc=True) as (port, spool):
        client = await connect(port)
        refused = await send(client, "ceo@reject.test", message("ceo@reject.test"))
        # The transaction is over; the next one is judged on its own.
        accepted = await send(client, "a@pass.test", message("a@pass.test"))
        assert await client.command("QUIT") == replies.CLOSING
        await client.close()

    assert (refused.code, refused.enhanced) == (550, "5.7.1")
    assert accepted.code == 250
    assert len(spool.commits) == 1
    rejected = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert any("dmarc=fail" in line and "reject.test" in line for line in rejected)


async def test_a_dns_timeout_is_accepted_with_temperror(
    tmp_path: Path, dns: TestDnsServer
) -> None:
    async with node(tmp_path, dns, reject_dmarc=True) as (port, spool):
        client = await connect(port)
        reply = await send(client, "a@slow.test", message("a@dmarcslow.test"))
        await client.close()

    assert reply.code == 250
    assert b"spf=temperror" in spool.contents[0]
    assert b"dmarc=temperror" in spool.contents[0]


async def test_a_dns_timeout_deferred_when_configured(
    tmp_path: Path, dns: TestDnsServer
) -> None:
    async with node(tmp_path, dns, defer_temperror=True) as (port, spool):
        client = await connect(port)
        reply = await send(client, "a@slow.test", message("a@dmarcslow.test"))
        await client.close()

    assert (reply.code, reply.enhanced) == (451, "4.7.1")
    assert spool.commits == []


async def test_client_reset_during_the_check_stores_nothing(
    tmp_path: Path, dns: TestDnsServer
) -> None:
    # A reset, not a FIN: after a FIN the client may still read our
    # reply (a half-close), so that message must be stored.
    async with node(tmp_path, dns) as (port, spool):
        client = await connect(port)
        for line in ("MAIL FROM:<a@slow.test>", "RCPT TO:<bob@postroom.test>"):
            assert (await client.command(line)).positive
        assert (await client.command("DATA")).code == 354
        await client.send(message("a@slow.test") + b".\r\n")
        sock = client.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.writer.transport.abort()
        # The SPF lookup times out after DNS_TIMEOUT; let it finish.
        await asyncio.sleep(DNS_TIMEOUT * 3)

    assert spool.commits == []
