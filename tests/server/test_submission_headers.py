"""Message-ID and Date completed on submission, never on relay.

``received.missing_fields`` is tested on bytes; the server tests send
real messages through a listener into a ``FakeSpool`` and look at what
was stored: the Received field, then what was added, then the message
as the client sent it.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import re
from pathlib import Path

import pytest

from postroom.config import Config
from postroom.protocol.smtp import replies
from postroom.server import received, tls
from postroom.testing.smtp import (
    LOOPBACK,
    FakeAuthenticator,
    FakeSpool,
    SmtpClient,
    make_config,
    running_server,
)

HOSTNAME = "mx.example.test"
QUEUE_ID = "0SGVW3MDVVM74CQ"
NOW = 1_772_445_600.0
PLAIN_ALICE = "AUTH PLAIN " + base64.b64encode(b"\0alice\0secret").decode()
QUEUED = 250

BARE = b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: hi\r\n\r\nhi\r\n"


def missing(content: bytes) -> bytes:
    return received.missing_fields(
        content, queue_id=QUEUE_ID, hostname=HOSTNAME, now=NOW
    )


# -- the check on bytes ----------------------------------------------------------


def test_both_added_when_missing() -> None:
    added = missing(BARE)

    message_id, date, end = added.split(b"\r\n")
    assert message_id == f"Message-ID: <{QUEUE_ID}@{HOSTNAME}>".encode()
    assert date.startswith(b"Date: ") and end == b""
    parsed = email.utils.parsedate_to_datetime(date[6:].decode())
    assert parsed.timestamp() == NOW and parsed.tzinfo is not None


@pytest.mark.parametrize(
    "fields",
    [
        b"Message-ID: <1@example.org>\r\nDate: Mon, 2 Mar 2026 10:00:00 +0000\r\n",
        b"message-id: <1@example.org>\r\ndate: Mon, 2 Mar 2026 10:00:00 +0000\r\n",
        b"MESSAGE-ID:\r\n <1@example.org>\r\nDATE:\r\n\tMon, 2 Mar 2026\r\n",
        b"Message-Id : <1@example.org>\r\nDate\t: Mon, 2 Mar 2026\r\n",
    ],
    ids=["canonical", "lower", "upper-folded", "space-before-colon"],
)
def test_present_fields_are_left_alone(fields: bytes) -> None:
    assert missing(fields + BARE) == b""
    assert missing(BARE.replace(b"\r\n\r\n", b"\r\n" + fields + b"\r\n", 1)) == b""


def test_only_the_missing_one_is_added() -> None:
    has_date = b"Date: Mon, 2 Mar 2026 10:00:00 +0000\r\n" + BARE
    has_id = b"Message-ID: <1@example.org>\r\n" + BARE

    assert missing(has_date) == f"Message-ID: <{QUEUE_ID}@{HOSTNAME}>\r\n".encode()
    assert missing(has_id).startswith(b"Date: ")
    assert b"Message-ID" not in missing(has_id)


@pytest.mark.parametrize(
    "content",
    [
        BARE + b"Message-ID: <in@body>\r\nDate: in the body\r\n",
        b"\r\nMessage-ID: <in@body>\r\nDate: in the body\r\n",  # no header
        b"Subject: x\r\n\r\n\r\nDate: after two blank lines\r\n",
    ],
    ids=["body", "empty-header-section", "blank-body-lines"],
)
def test_only_the_header_section_counts(content: bytes) -> None:
    assert missing(content).count(b"\r\n") == 2


@pytest.mark.parametrize(
    "header",
    [
        b"Subject: a\r\n X-Date: folded into the subject\r\n",
        b"X-Date: not it\r\nIn-Reply-To: <Message-ID: no>\r\n",
        b"Subject: about\r\n Date: a continuation line, not a field\r\n",
    ],
)
def test_look_alikes_do_not_count(header: bytes) -> None:
    assert missing(header + b"\r\nbody\r\n").count(b"\r\n") == 2


def test_headers_only_message_without_body() -> None:
    assert missing(b"Subject: x\r\nDate: now\r\n").startswith(b"Message-ID: ")


def test_idn_hostname_becomes_its_a_label() -> None:
    added = received.missing_fields(
        BARE, queue_id=QUEUE_ID, hostname="mx.bücher.test", now=NOW
    )
    assert f"<{QUEUE_ID}@mx.xn--bcher-kva.test>".encode() in added


# -- through the server ----------------------------------------------------------


def submission_config(tmp_path: Path, kind: str = "submission") -> Config:
    config = make_config(
        tmp_path, auth_without_tls=True, listeners=f"{kind}={LOOPBACK}:0"
    )
    config.hostname = HOSTNAME
    return config


async def send(client: SmtpClient, message: bytes, *, auth: bool) -> None:
    """EHLO, AUTH if asked, one message, QUIT."""
    assert (await client.read_reply()).code == 220
    assert (await client.command("EHLO client.example.org")).code == 250
    if auth:
        assert await client.command(PLAIN_ALICE) == replies.AUTH_OK
    await client.send(
        b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n"
    )
    await client.read_replies(3)
    await client.send(message + b".\r\n")
    assert (await client.read_reply()).code == QUEUED
    await client.command("QUIT")
    await client.close()


async def submit(config: Config, message: bytes, *, auth: bool) -> bytes:
    """Send *message* to the config's one listener; what was stored."""
    spool = FakeSpool()
    async with running_server(
        config, spool, authenticator=FakeAuthenticator()
    ) as server:
        await send(await SmtpClient.connect(server.bound_ports[0]), message, auth=auth)
    ((envelope, content),) = spool.commits
    assert envelope.queue_id in content.split(b"\r\n\r\n")[0].decode()
    return content


def fields_after_received(content: bytes, message: bytes) -> list[bytes]:
    """The field names between our Received and the client's message."""
    assert content.startswith(b"Received: ") and content.endswith(message)
    top = content[: len(content) - len(message)]
    return re.findall(rb"^([\w-]+):", top, re.MULTILINE)


async def test_submission_adds_message_id_and_date(tmp_path: Path) -> None:
    content = await submit(submission_config(tmp_path), BARE, auth=True)

    assert fields_after_received(content, BARE) == [
        b"Received",
        b"Message-ID",
        b"Date",
    ]
    queue_id = re.search(rb"with ESMTPA id (\w+)", content)
    assert queue_id is not None
    assert b"Message-ID: <" + queue_id[1] + b"@mx.example.test>\r\n" in content


async def test_submission_leaves_present_fields_alone(tmp_path: Path) -> None:
    message = b"message-ID:\r\n <own@example.org>\r\nDATE: Mon, 2 Mar 2026\r\n" + BARE
    content = await submit(submission_config(tmp_path), message, auth=True)

    assert fields_after_received(content, message) == [b"Received"]


async def test_submission_ignores_fields_in_the_body(tmp_path: Path) -> None:
    message = BARE + b"Message-ID: <quoted@example.org>\r\nDate: yesterday\r\n"
    content = await submit(submission_config(tmp_path), message, auth=True)

    assert fields_after_received(content, message)[1:] == [b"Message-ID", b"Date"]


async def test_relay_from_a_trusted_client_adds_nothing(tmp_path: Path) -> None:
    config = make_config(tmp_path)  # relay listener; loopback is trusted
    config.hostname = HOSTNAME

    content = await submit(config, BARE, auth=False)

    assert fields_after_received(content, BARE) == [b"Received"]


async def test_authenticated_client_on_relay_listener_is_submitting(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path, auth_without_tls=True)
    config.hostname = HOSTNAME

    content = await submit(config, BARE, auth=True)

    assert fields_after_received(content, BARE)[1:] == [b"Message-ID", b"Date"]


async def test_submissions_listener_adds_them_too(tmp_path: Path) -> None:
    config = submission_config(tmp_path, "submissions")
    spool = FakeSpool()
    client_tls = tls.client_context(verify=False)
    async with running_server(
        config,
        spool,
        authenticator=FakeAuthenticator(),
        tls_context=tls.server_context(config),
    ) as server:
        reader, writer = await asyncio.open_connection(
            LOOPBACK,
            server.bound_ports[0],
            ssl=client_tls,
            server_hostname="localhost",
        )
        await send(SmtpClient(reader, writer, timeout=5), BARE, auth=True)

    ((_, content),) = spool.commits
    assert fields_after_received(content, BARE)[1:] == [b"Message-ID", b"Date"]
