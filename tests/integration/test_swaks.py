"""swaks, a real and widely used SMTP test client, against ``postroom serve``.

Every run gets an explicit HELO name, sender and message (``--data``),
so that swaks never asks the machine for its own name, and a short
``--timeout``. Each test checks swaks's exit status and the ``queued
as`` reply, then finds the message in the queue; where the message is
ours, the stored bytes are compared with what swaks says it sent.

The node runs with ``smtp.undeclared_8bit = "accept"``: swaks 20201014
(Debian 12) has no ``--8bitmime`` and so cannot declare BODY=8BITMIME,
and this lets it send an 8-bit body at all (the default, refusing such
a body with 550 5.6.1, is tested with smtplib). Nothing else here
depends on that setting.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import pytest

from postroom.protocol.smtp import replies
from postroom.server import policy
from postroom.testing.process import (
    LOOPBACK,
    PostroomProcess,
    queued_as,
    split_received,
)

pytestmark = pytest.mark.peers

USER = "erin@postroom.test"
PASSWORD = "s3cret-for-swaks"
# Date and Message-ID present: submission would add them otherwise.
MESSAGE = (b"From: <swaks@client.test>\r\nTo: <b@other.test>\r\n"
           b"Date: Thu, 03 Dec 2026 12:00:00 +0000\r\n"
           b"Message-ID: <swaks-1@client.test>\r\n"
           b"Subject: from swaks\r\n\r\nHello from swaks.\r\n"
           b".a line that starts with a dot\r\n")

# swaks's exit statuses (swaks --help, EXIT CODES).
EXIT_MAIL = 23
EXIT_AUTH = 28


@pytest.fixture(scope="module")
def swaks(require_tool: Callable[[str], str]) -> str:
    return require_tool("swaks")


@pytest.fixture(scope="module")
def swaks_tls(swaks: str, missing_peer: Callable[[str], NoReturn]) -> str:
    # TLS needs Perl's Net::SSLeay, which swaks only recommends.
    support = subprocess.run([swaks, "--support"], capture_output=True,
                             text=True, timeout=30)
    if "=== TLS supported" not in support.stdout + support.stderr:
        missing_peer("swaks cannot do TLS (install libnet-ssleay-perl)")
    return swaks


@pytest.fixture(scope="module")
def server(
    module_postroom_factory: Callable[..., PostroomProcess],
) -> PostroomProcess:
    node = module_postroom_factory({"smtp": {"undeclared_8bit": "accept"}},
                                   start=False)
    node.add_user(USER, PASSWORD)
    # A local recipient must be an account since #4.
    node.add_user("c@postroom.test", PASSWORD)
    return node.start()


@pytest.fixture
def data_file(tmp_path: Path) -> Callable[[bytes], str]:
    def write(content: bytes) -> str:
        path = tmp_path / f"data{len(list(tmp_path.iterdir()))}.eml"
        path.write_bytes(content)
        return f"@{path}"

    return write


def run_swaks(swaks: str, port: int, *args: str,
              data: str) -> subprocess.CompletedProcess[bytes]:
    argv = [swaks, "--server", f"{LOOPBACK}:{port}", "--helo", "client.test",
            "--from", "swaks@client.test", "--timeout", "5", "--data", data,
            *args]
    if "--to" not in args:
        argv += ["--to", "b@other.test"]
    return subprocess.run(argv, capture_output=True, timeout=60)


def transcript(done: subprocess.CompletedProcess[bytes]) -> str:
    return (done.stdout + done.stderr).decode("utf-8", "replace")


def data_sent(done: subprocess.CompletedProcess[bytes]) -> bytes:
    """The message as swaks sent it, read back from its transcript: the
    client lines between the 354 and the lone dot, dot-unstuffed."""
    lines = re.split(rb"\r?\n", done.stdout)
    start = next(i for i, line in enumerate(lines)
                 if line.startswith((b"<-  354", b"<~  354")))
    out = []
    for line in lines[start + 1:]:
        text = line[4:]
        if text == b".":
            return b"".join(out)
        out.append((text[1:] if text.startswith(b".") else text) + b"\r\n")
    raise AssertionError("no end of data in the swaks transcript")


def queued(server: PostroomProcess, done: subprocess.CompletedProcess[bytes]
           ) -> tuple[str, bytes]:
    """The queue id swaks was given, and the stored content without our
    Received header."""
    assert done.returncode == 0, transcript(done)
    queue_id = queued_as(done.stdout)
    with server.queue() as queue:
        content = queue.read_content(queue_id)
    return queue_id, split_received(content)[1]


# -- Plain and pipelined ----------------------------------------------------


def test_plain(swaks: str, server: PostroomProcess,
               data_file: Callable[[bytes], str]) -> None:
    done = run_swaks(swaks, server.relay_port, data=data_file(MESSAGE))

    _, content = queued(server, done)
    assert content == data_sent(done)
    assert b"Hello from swaks.\r\n.a line that starts with a dot\r\n" in content


def test_pipeline(swaks: str, server: PostroomProcess,
                  data_file: Callable[[bytes], str]) -> None:
    done = run_swaks(swaks, server.relay_port, "--pipeline",
                     "--to", "b@other.test,c@postroom.test",
                     data=data_file(MESSAGE))

    queue_id, content = queued(server, done)
    assert content == data_sent(done)
    # The whole envelope went out before the first reply came back.
    out = transcript(done)
    assert out.index(" -> DATA") < out.index("<-  250 2.1.0")
    with server.queue() as queue:
        envelope, _ = queue.get(queue_id)
    assert [r.address for r in envelope.recipients] == [
        "b@other.test", "c@postroom.test"]


def test_refused_recipient(swaks: str, server: PostroomProcess,
                           data_file: Callable[[bytes], str]) -> None:
    done = run_swaks(swaks, server.relay_port, "--to", "x%y@postroom.test",
                     data=data_file(MESSAGE))

    assert done.returncode == 24  # no RCPT accepted
    assert str(policy.ROUTING_IN_LOCAL_PART) in transcript(done)


# -- TLS and AUTH -------------------------------------------------------------


def test_implicit_tls_with_auth(swaks_tls: str, server: PostroomProcess,
                                data_file: Callable[[bytes], str]) -> None:
    done = run_swaks(swaks_tls, server.submissions_port,
                     "--protocol", "SSMTPA", "--auth", "PLAIN",
                     "--auth-user", USER, "--auth-password", PASSWORD,
                     data=data_file(MESSAGE))

    queue_id, content = queued(server, done)
    assert content == data_sent(done)
    with server.queue() as queue:
        envelope, _ = queue.get(queue_id)
    assert envelope.auth_user == USER
    assert envelope.tls.startswith("TLSv1.")


def test_wrong_password(swaks_tls: str, server: PostroomProcess,
                        data_file: Callable[[bytes], str]) -> None:
    done = run_swaks(swaks_tls, server.submissions_port,
                     "--protocol", "SSMTPA", "--auth", "LOGIN",
                     "--auth-user", USER, "--auth-password", "nope",
                     data=data_file(MESSAGE))

    assert done.returncode == EXIT_AUTH
    assert str(replies.AUTH_FAILED) in transcript(done)


def test_no_auth_no_mail(swaks_tls: str, server: PostroomProcess,
                         data_file: Callable[[bytes], str]) -> None:
    done = run_swaks(swaks_tls, server.submissions_port, "--tls-on-connect",
                     data=data_file(MESSAGE))

    assert done.returncode == EXIT_MAIL
    assert str(policy.AUTH_REQUIRED) in transcript(done)


def test_starttls_with_auth_login(
        swaks_tls: str, server: PostroomProcess,
        data_file: Callable[[bytes], str]) -> None:
    done = run_swaks(swaks_tls, server.submission_port,
                     "--tls", "--auth", "LOGIN", "--auth-user", USER,
                     "--auth-password", PASSWORD, data=data_file(MESSAGE))

    queue_id, content = queued(server, done)
    assert content == data_sent(done)
    with server.queue() as queue:
        assert queue.get(queue_id)[0].auth_user == USER


def test_protocol_esmtpsa(swaks_tls: str, server: PostroomProcess,
                          merging_proxy: Callable[[int], int],
                          data_file: Callable[[bytes], str]) -> None:
    # Through the proxy, swaks's first command after the handshake
    # reaches the server with the handshake's end: the STARTTLS race
    # (regression test in test_smtplib) with a real client, every time.
    done = run_swaks(swaks_tls, merging_proxy(server.submission_port),
                     "--protocol", "ESMTPSA", "--auth-user", USER,
                     "--auth-password", PASSWORD, "--timeout", "2",
                     data=data_file(MESSAGE))

    queue_id, _ = queued(server, done)
    with server.queue() as queue:
        envelope, _ = queue.get(queue_id)
    assert envelope.auth_user == USER and envelope.tls


# -- 8-bit content --------------------------------------------------------------

EIGHT_BIT = ("Subject: 8-bit\r\nContent-Type: text/plain; charset=utf-8\r\n"
             "Content-Transfer-Encoding: 8bit\r\n\r\n"
             "Grüße, ça va? — ok\r\n").encode()


def test_8bit_body(swaks: str, server: PostroomProcess,
                  data_file: Callable[[bytes], str]) -> None:
    done = run_swaks(swaks, server.relay_port, data=data_file(EIGHT_BIT))

    queue_id, content = queued(server, done)
    assert content == data_sent(done)
    assert "Grüße, ça va? — ok\r\n".encode() in content
    with server.queue() as queue:
        assert queue.get(queue_id)[0].body == ""  # nothing was declared
