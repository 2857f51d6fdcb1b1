"""IMAP end to end with clients people really run: mbsync (isync),
getmail6 and fetchmail.

Each runs as a subprocess with a private configuration under
``tmp_path`` (and ``HOME`` pointed there, so nothing of the machine's
user leaks in), bounded by a timeout. Missing tools skip these tests on
a developer's machine and fail them under CI (``require_tool``);
``make peers`` installs them.
"""

from __future__ import annotations

import imaplib
import itertools
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from postroom.mailbox.store import MailStore
from postroom.testing.process import IMAP_KINDS, KINDS, LOOPBACK, PostroomProcess

pytestmark = pytest.mark.peers

PASSWORD = "client secret"
MESSAGES = [
    b"Subject: one\r\nFrom: a@example.org\r\n\r\n.leading dot\r\n..two\r\nend\r\n",
    b"Subject: two\r\nX-Long: " + b"y" * 900 + b"\r\n\r\nsecond\r\n",
    b"Subject: three\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    + "8-bit: Grüße\r\n".encode(),
]
_users = itertools.count(1)


@pytest.fixture(scope="module")
def node(
    module_postroom_factory: Callable[..., PostroomProcess],
) -> PostroomProcess:
    return module_postroom_factory(kinds=KINDS + IMAP_KINDS)


def new_user(node: PostroomProcess, messages: list[bytes]) -> str:
    user = f"client{next(_users)}@postroom.test"
    node.add_user(user, PASSWORD)
    with MailStore(node.data_dir / "mailboxes").open(user) as inbox:
        for data in messages:
            inbox.append(data)
    return user


def run(argv: list[str], work: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HOME": str(work)},
        stdin=subprocess.DEVNULL,
        cwd=work,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def maildir_messages(path: Path) -> list[bytes]:
    """Messages of a Maildir (new and cur), by content, sorted, without
    the X-TUID field mbsync adds to find its copies again."""
    files = [*path.glob("new/*"), *path.glob("cur/*")]
    return sorted(_without_tuid(f.read_bytes()) for f in files)


def _without_tuid(data: bytes) -> bytes:
    head, sep, body = data.partition(b"\n\n")
    lines = [line for line in head.split(b"\n") if not line.startswith(b"X-TUID: ")]
    return b"\n".join(lines) + sep + body


def as_lf(message: bytes) -> bytes:
    return message.replace(b"\r\n", b"\n")


def server_flags(node: PostroomProcess, user: str) -> list[bytes]:
    client = imaplib.IMAP4(LOOPBACK, node.imap_port, timeout=10)
    client.login(user, PASSWORD)
    client.select("INBOX")
    flags = client.fetch("1:*", "(FLAGS)")[1]
    client.logout()
    return [f for f in flags if isinstance(f, bytes)]


# ----------------------------------------------------------------------
# mbsync


def mbsync_config(node: PostroomProcess, work: Path, user: str, tls: str) -> Path:
    local = work / "mail"
    local.mkdir()
    port = node.imaps_port if tls == "IMAPS" else node.imap_port
    rc = work / "mbsyncrc"
    rc.write_text(
        "IMAPAccount postroom\n"
        f"Host {LOOPBACK}\n"
        f"Port {port}\n"
        f"User {user}\n"
        f'Pass "{PASSWORD}"\n'
        f"SSLType {tls}\n"
        # The node's self-signed certificate, trusted as the host's own.
        f"CertificateFile {node.cert_path}\n"
        "\n"
        "IMAPStore remote\n"
        "Account postroom\n"
        "\n"
        "MaildirStore local\n"
        f"Path {local}/\n"
        f"Inbox {local}/INBOX\n"
        "SubFolders Verbatim\n"
        "\n"
        "Channel postroom\n"
        "Far :remote:\n"
        "Near :local:\n"
        "Patterns *\n"
        "Create Near\n"
        "Sync All\n"
        "SyncState *\n"
    )
    rc.chmod(0o600)
    return rc


def test_mbsync_pulls_everything_and_pushes_flags(
    node: PostroomProcess, tmp_path: Path, require_tool: Callable[[str], str]
) -> None:
    mbsync = require_tool("mbsync")
    user = new_user(node, MESSAGES)
    rc = mbsync_config(node, tmp_path, user, "STARTTLS")

    run([mbsync, "-c", str(rc), "-a"], tmp_path)
    inbox = tmp_path / "mail" / "INBOX"
    pulled = maildir_messages(inbox)
    folders = sorted(p.name for p in (tmp_path / "mail").iterdir())

    # Mark every local copy seen and flagged, then sync back.
    for path in [*inbox.glob("new/*"), *inbox.glob("cur/*")]:
        base = path.name.split(":2,")[0]
        path.rename(inbox / "cur" / f"{base}:2,FS")
    run([mbsync, "-c", str(rc), "-a"], tmp_path)

    assert pulled == sorted(as_lf(m) for m in MESSAGES)
    assert {"INBOX", "Sent", "Drafts", "Trash", "Junk"} <= set(folders)
    flags = server_flags(node, user)
    assert len(flags) == len(MESSAGES)
    assert all(b"\\Seen" in f and b"\\Flagged" in f for f in flags), flags


def test_mbsync_over_imaps_pushes_new_messages(
    node: PostroomProcess, tmp_path: Path, require_tool: Callable[[str], str]
) -> None:
    mbsync = require_tool("mbsync")
    user = new_user(node, MESSAGES[:1])
    rc = mbsync_config(node, tmp_path, user, "IMAPS")
    run([mbsync, "-c", str(rc), "-a"], tmp_path)

    # A message written locally (a draft, say) goes up with APPEND.
    drafts = tmp_path / "mail" / "Drafts"
    (drafts / "new" / "1700000000.local.draft").write_bytes(as_lf(MESSAGES[1]))
    run([mbsync, "-c", str(rc), "-a"], tmp_path)

    with MailStore(node.data_dir / "mailboxes").open(user, "Drafts") as box:
        stored = [box.read(m.uid) for m in box.messages()]
    assert len(stored) == 1
    # mbsync adds an X-TUID header to find its APPEND again.
    assert stored[0].endswith(b"\r\n\r\nsecond\r\n")
    assert b"X-Long: " + b"y" * 900 in stored[0]


# ----------------------------------------------------------------------
# getmail6


def test_getmail_reads_all_and_keeps(
    node: PostroomProcess, tmp_path: Path, require_tool: Callable[[str], str]
) -> None:
    getmail = require_tool("getmail")
    # Not the long header: getmail re-folds it (Python's email package).
    messages = [MESSAGES[0], MESSAGES[2]]
    user = new_user(node, messages)
    out = tmp_path / "out"
    out.mkdir()
    rc = tmp_path / "getmailrc"
    rc.write_text(
        "[retriever]\n"
        "type = SimpleIMAPSSLRetriever\n"
        f"server = {LOOPBACK}\n"
        f"port = {node.imaps_port}\n"
        f"username = {user}\n"
        f"password = {PASSWORD}\n"
        'mailboxes = ("INBOX",)\n'
        f"ca_certs = {node.cert_path}\n"
        "ssl_cert_hostname = localhost\n"
        "record_mailbox = false\n"
        "\n"
        # An external MDA rather than getmail's Maildir writer, which
        # refuses to run as root (as the CI container does).
        "[destination]\n"
        "type = MDA_external\n"
        "path = /bin/sh\n"
        f'arguments = ("-c", "cat > {out}/msg.$(date +%%s%%N).$$")\n'
        "allow_root_commands = true\n"
        "\n"
        "[options]\n"
        "read_all = true\n"
        "delete = false\n"
        "delivered_to = false\n"
        "received = false\n"
        "verbose = 2\n"
    )
    argv = [getmail, "--getmaildir", str(tmp_path), "--rcfile", str(rc)]

    run(argv, tmp_path)
    # getmail puts a Return-Path of its own (<unknown>) on top.
    first = sorted(
        p.read_bytes().removeprefix(b"Return-Path: <unknown>\n") for p in out.iterdir()
    )
    # read_all: the second run fetches everything again.
    run(argv, tmp_path)
    second = list(out.iterdir())

    assert first == sorted(as_lf(m) for m in messages)
    assert len(second) == 2 * len(messages)
    with MailStore(node.data_dir / "mailboxes").open(user) as inbox:
        assert len(inbox.messages()) == len(messages)


# ----------------------------------------------------------------------
# fetchmail


def test_fetchmail_imap_starttls_fetches_and_deletes(
    node: PostroomProcess, tmp_path: Path, require_tool: Callable[[str], str]
) -> None:
    fetchmail = require_tool("fetchmail")
    user = new_user(node, MESSAGES)
    out = tmp_path / "out"
    out.mkdir()
    mda = tmp_path / "deliver.sh"
    mda.write_text(f'#!/bin/sh\ncat > "{out}/msg.$(date +%s%N).$$"\n')
    mda.chmod(0o755)
    rc = tmp_path / "fetchmailrc"
    rc.write_text(
        "set no syslog\n"
        f"poll localhost via {LOOPBACK} with proto IMAP port {node.imap_port}\n"
        f'  user "{user}" there with password "{PASSWORD}" is "nobody" here\n'
        '  options nokeep sslproto "tls1.2+" sslcertck\n'
        f'  sslcommonname "localhost" sslcertfile "{node.cert_path}"\n'
        f'  mda "{mda}"\n'
    )
    rc.chmod(0o600)

    done = run(
        [
            fetchmail,
            "-f",
            str(rc),
            "--nosyslog",
            "-v",
            "--idfile",
            str(tmp_path / "fetchids"),
        ],
        tmp_path,
    )

    assert "upgrade to TLS succeeded" in done.stdout
    got = sorted(_without_received(p.read_bytes()) for p in out.iterdir())
    assert got == sorted(as_lf(m) for m in MESSAGES)
    with MailStore(node.data_dir / "mailboxes").open(user) as inbox:
        assert inbox.messages() == []


def _without_received(data: bytes) -> bytes:
    # fetchmail prepends its own Received field.
    assert data.startswith(b"Received: "), data[:100]
    end = 0
    while True:
        end = data.index(b"\n", end) + 1
        if data[end : end + 1] not in (b" ", b"\t"):
            return data[end:]
