"""The ``postroom`` command end to end: ``send`` against a running node,
``queue`` on what it sent, and the one-line errors an operator sees.

Every command runs as a subprocess through the real entry point
(``python -m postroom``), exactly as typed in a shell; each costs an
interpreter start, so the tests below make each run count.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from postroom.protocol.smtp import replies
from postroom.server import policy
from postroom.testing.process import (
    LOOPBACK,
    PostroomProcess,
    queued_as,
    render_toml,
    split_received,
)

USER = "frank@postroom.test"
PASSWORD = "a password with spaces "  # the trailing space is part of it

EXIT_ACCEPTED, EXIT_LOCAL, EXIT_REJECTED = 0, 1, 2


@pytest.fixture(scope="module")
def node(
    module_postroom_factory: Callable[..., PostroomProcess],
) -> PostroomProcess:
    server = module_postroom_factory(start=False)
    server.add_user(USER, PASSWORD)
    # A local recipient must be an account since #4.
    server.add_user("two@postroom.test", PASSWORD)
    return server.start()


@pytest.fixture
def password_file(tmp_path: Path) -> str:
    path = tmp_path / "password"
    path.write_text(PASSWORD + "\n")
    return str(path)


def send(node: PostroomProcess, port: int, *args: str
         ) -> subprocess.CompletedProcess[str]:
    return node.cli("send", "--server", f"{LOOPBACK}:{port}",
                    "--ehlo", "cli.test", "--timeout", "10", *args)


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    """The single ``postroom: ...`` line a user error prints, checked."""
    assert done.returncode == EXIT_LOCAL, (done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("postroom: "), lines[0]
    return lines[0]


# -- send, then look at it with queue -------------------------------------------


def test_send_then_queue_show_list_delete(node: PostroomProcess) -> None:
    done = send(node, node.relay_port, "--from", "cli@client.test",
                "--to", "b@other.test", "--subject", "from the CLI",
                "--body", "Hello from postroom send.")
    assert done.returncode == EXIT_ACCEPTED, done.stdout + done.stderr
    queue_id = queued_as(done.stdout)

    shown, with_body, listing, unknown = node.cli_many(
        ["queue", "show", queue_id],
        ["queue", "show", queue_id, "--body"],
        ["queue", "list", "--json"],
        ["queue", "delete", "0NOSUCHMESSAG"])

    # show: the envelope as the client gave it, then the headers only.
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[:2] == [f"Queue-ID: {queue_id}", "State: queued"]
    assert any(line.startswith("Sender: <cli@client.test> SIZE=")
               for line in lines)
    assert "Recipient: <b@other.test> (queued)" in lines
    assert f"Listener: relay:{node.relay_port}" in lines
    assert "Subject: from the CLI" in lines
    assert "Hello from postroom send." not in shown.stdout
    assert "Hello from postroom send." in with_body.stdout

    rows = {row["queue_id"]: row for row in json.loads(listing.stdout)}
    assert rows[queue_id]["sender"] == "cli@client.test"
    assert rows[queue_id]["recipients"][0]["address"] == "b@other.test"

    # An id that was never there: one line, and nothing is deleted.
    assert one_line_error(unknown) == (
        "postroom: no message with queue id 0NOSUCHMESSAG")

    deleted = node.cli("queue", "delete", queue_id)
    assert (deleted.returncode, deleted.stdout) == (0, "Deleted 1 message\n")

    # Gone: show names the id in one line, as for an id never seen.
    assert one_line_error(node.cli("queue", "show", queue_id)) == (
        f"postroom: no message with queue id {queue_id}")


def test_send_pipelining_with_dsn(node: PostroomProcess) -> None:
    done = send(node, node.relay_port, "--pipelining",
                "--from", "pipe@client.test",
                "--to", "one@other.test,two@postroom.test",
                "--dsn-notify", "SUCCESS,FAILURE", "--dsn-ret", "HDRS",
                "--envid", "cli+envid=1")
    assert done.returncode == EXIT_ACCEPTED, done.stdout + done.stderr
    queue_id = queued_as(done.stdout)

    # MAIL, both RCPTs and DATA went out before the first reply came.
    transcript = done.stdout.splitlines()
    first_reply = next(i for i, line in enumerate(transcript)
                       if line.startswith("S: 250 2.1.0"))
    sent_before = [line.split()[1] for line in transcript[:first_reply]
                   if line.startswith("C: ")]
    assert sent_before[-4:] == ["MAIL", "RCPT", "RCPT", "DATA"]

    shown = node.cli("queue", "show", queue_id).stdout.splitlines()
    sender = next(line for line in shown if line.startswith("Sender: "))
    assert "RET=HDRS" in sender and "ENVID=cli+envid=1" in sender
    assert ("Recipient: <one@other.test> NOTIFY=SUCCESS,FAILURE (queued)"
            in shown)
    assert ("Recipient: <two@postroom.test> NOTIFY=SUCCESS,FAILURE (queued)"
            in shown)


def test_send_bdat_in_chunks(node: PostroomProcess, tmp_path: Path) -> None:
    message = (b"From: <bdat@client.test>\r\nSubject: chunked\r\n\r\n"
               + b"".join(b"line %d of the chunked message\r\n" % n
                          for n in range(40))
               + b".a leading dot is not stuffed in BDAT\r\n")
    body = tmp_path / "message.eml"
    body.write_bytes(message)

    done = send(node, node.relay_port, "--bdat", "--chunk-size", "300",
                "--raw", "--body-file", str(body),
                "--from", "bdat@client.test", "--to", "b@other.test")

    assert done.returncode == EXIT_ACCEPTED, done.stdout + done.stderr
    assert "C: BDAT 300\n" in done.stdout
    assert " LAST\n" in done.stdout
    queue_id = queued_as(done.stdout)
    with node.queue() as queue:
        assert split_received(queue.read_content(queue_id))[1] == message


def test_send_implicit_tls_with_auth(node: PostroomProcess,
                                     password_file: str) -> None:
    # --cafile: the node's own certificate, verified for 127.0.0.1.
    done = send(node, node.submissions_port, "--tls",
                "--cafile", str(node.cert_path), "--auth-user", USER,
                "--auth-password-file", password_file,
                "--from", USER, "--to", "b@other.test")

    assert done.returncode == EXIT_ACCEPTED, done.stdout + done.stderr
    assert "verified" in done.stdout
    assert PASSWORD.strip() not in done.stdout  # never shown
    with node.queue() as queue:
        envelope, _ = queue.get(queued_as(done.stdout))
    assert envelope.auth_user == USER
    assert envelope.tls.startswith("TLSv1.")


def test_send_starttls_with_auth(node: PostroomProcess, password_file: str,
                                 merging_proxy: Callable[[int], int]) -> None:
    # The proxy delivers our EHLO with the end of the TLS handshake, the
    # case that used to hang (the STARTTLS race, see test_smtplib).
    port = merging_proxy(node.submission_port)

    done = send(node, port, "--starttls", "--cafile", str(node.cert_path),
                "--auth-user", USER, "--auth-password-file", password_file,
                "--auth-mech", "LOGIN",
                "--from", USER, "--to", "b@other.test")

    assert done.returncode == EXIT_ACCEPTED, done.stdout + done.stderr
    with node.queue() as queue:
        envelope, _ = queue.get(queued_as(done.stdout))
    assert envelope.auth_user == USER


def test_send_refused_without_auth(node: PostroomProcess) -> None:
    done = send(node, node.submission_port, "--from", "anon@client.test",
                "--to", "b@other.test")

    assert done.returncode == EXIT_REJECTED
    refusal = done.stderr.splitlines()[0]
    assert refusal.startswith(
        "postroom: server rejected MAIL FROM:<anon@client.test>")
    assert refusal.endswith(f": {policy.AUTH_REQUIRED}")


# -- Configuration errors ----------------------------------------------------------


@pytest.mark.parametrize(("value", "message"), [
    ('"many"', "postroom: smtp.max_recipients: expected an integer, "
               "got 'many'"),
    ("0", "postroom: smtp.max_recipients: must be at least 1"),
])
def test_bad_setting_is_one_line(tmp_path: Path, value: str,
                                 message: str) -> None:
    config = tmp_path / "postroom.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n'
                      f"[smtp]\nmax_recipients = {value}\n")

    done = subprocess.run(
        [sys.executable, "-m", "postroom", "-c", str(config), "serve"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path)

    assert one_line_error(done) == message
    assert not (tmp_path / "data").exists()  # refused before any work


def test_user_add_before_the_first_start(tmp_path: Path) -> None:
    config = tmp_path / "postroom.toml"
    config.write_text(render_toml({"": {"data_dir": str(tmp_path / "data")}}))

    done = subprocess.run(
        [sys.executable, "-m", "postroom", "-c", str(config), "user", "add",
         "new@postroom.test", "--password-stdin"],
        input="pw\n", capture_output=True, text=True, timeout=60,
        cwd=tmp_path)

    assert (done.returncode, done.stderr) == (0, "")


def test_send_refused_recipient(node: PostroomProcess) -> None:
    done = send(node, node.relay_port, "--from", "x@client.test",
                "--to", "a%b@postroom.test")

    assert done.returncode == EXIT_REJECTED
    assert f"S: {policy.ROUTING_IN_LOCAL_PART}" in done.stdout
    assert replies.CLOSING.render().decode().strip() in done.stdout
