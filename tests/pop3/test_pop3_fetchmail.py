"""POP3 end to end with fetchmail, a client people really run.

fetchmail runs as a subprocess with a private rc file and id file,
``--nosyslog``, delivering each message through an MDA script that
writes it to a file of its own, and bounded by a timeout. It prepends
its own Received header and hands the MDA LF line ends; the rest must
be the stored message.

Missing fetchmail skips these tests on a developer's machine and fails
them under CI (``require_tool``); ``make peers`` installs it.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from postroom.mailbox.store import MailStore
from postroom.testing.process import KINDS, POP3_KINDS, PostroomProcess

pytestmark = pytest.mark.peers

PASSWORD = "fetch secret"
MESSAGES = [
    b"Subject: one\r\n\r\n.leading dot\r\n..two dots\r\nend\r\n",
    b"Subject: two\r\nX-Long: " + b"y" * 900 + b"\r\n\r\nsecond\r\n",
]
_users = itertools.count(1)


@pytest.fixture(scope="module")
def node(
    module_postroom_factory: Callable[..., PostroomProcess],
) -> PostroomProcess:
    return module_postroom_factory(kinds=KINDS + POP3_KINDS)


def new_user(node: PostroomProcess, messages: list[bytes]) -> str:
    user = f"fetch{next(_users)}@postroom.test"
    node.add_user(user, PASSWORD)
    append(node, user, messages)
    return user


def append(node: PostroomProcess, user: str, messages: list[bytes]) -> None:
    with MailStore(node.data_dir / "mailboxes").open(user) as inbox:
        for data in messages:
            inbox.append(data)


class Fetchmail:
    """One fetchmail set-up: rc file, id file, MDA, output directory."""

    def __init__(self, node: PostroomProcess, work: Path, user: str, *,
                 implicit_tls: bool = False, keep: bool = False) -> None:
        self.work = work
        self.out = work / "out"
        self.out.mkdir(parents=True)
        mda = work / "deliver.sh"
        mda.write_text(
            "#!/bin/sh\n"
            f'cat > "{self.out}/msg.$(date +%s%N).$$"\n'
        )
        mda.chmod(0o755)
        port = node.pop3s_port if implicit_tls else node.pop3_port
        # STLS is required, not merely tried, with an explicit sslproto.
        tls = "ssl" if implicit_tls else 'sslproto "tls1.2+"'
        self.rc = work / "fetchmailrc"
        self.rc.write_text(
            "set no syslog\n"
            f"poll localhost via 127.0.0.1 with proto POP3 port {port}\n"
            f'  user "{user}" there with password "{PASSWORD}" is "nobody" here\n'
            f"  options {'keep' if keep else 'nokeep'} {tls} sslcertck\n"
            # The certificate names localhost, not the address we dial.
            f'  sslcommonname "localhost" sslcertfile "{node.cert_path}"\n'
            f'  mda "{mda}"\n'
        )
        # fetchmail refuses an rc file others may read (it holds a
        # password).
        self.rc.chmod(0o600)

    def run(self, fetchmail: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "HOME": str(self.work)}
        return subprocess.run(
            [fetchmail, "-f", str(self.rc), "--nosyslog", "-v",
             "--idfile", str(self.work / "fetchids")],
            capture_output=True, text=True, timeout=60, env=env,
            stdin=subprocess.DEVNULL,
        )

    def messages(self) -> list[bytes]:
        """What the MDA got, oldest first, fetchmail's Received cut off."""
        files = sorted(self.out.iterdir(), key=lambda p: p.name)
        return [_without_received(p.read_bytes()) for p in files]


def _without_received(data: bytes) -> bytes:
    assert data.startswith(b"Received: "), data[:100]
    end = 0
    while True:
        end = data.index(b"\n", end) + 1
        if data[end : end + 1] not in (b" ", b"\t"):
            return data[end:]


def as_lf(message: bytes) -> bytes:
    return message.replace(b"\r\n", b"\n")


def test_fetchmail_stls_fetches_and_deletes(
    node: PostroomProcess, tmp_path: Path, require_tool: Callable[[str], str]
) -> None:
    fetchmail = require_tool("fetchmail")
    user = new_user(node, MESSAGES)
    client = Fetchmail(node, tmp_path, user)

    done = client.run(fetchmail)

    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "upgrade to TLS succeeded" in done.stdout
    assert client.messages() == [as_lf(m) for m in MESSAGES]
    # fetchmail deleted them (nokeep): nothing is left to fetch.
    again = client.run(fetchmail)
    assert again.returncode == 1  # PS_NOMAIL
    with MailStore(node.data_dir / "mailboxes").open(user) as inbox:
        assert inbox.messages() == []


def test_fetchmail_pop3s_keep_uses_uidl(
    node: PostroomProcess, tmp_path: Path, require_tool: Callable[[str], str]
) -> None:
    fetchmail = require_tool("fetchmail")
    user = new_user(node, MESSAGES[:1])
    client = Fetchmail(node, tmp_path, user, implicit_tls=True, keep=True)

    first = client.run(fetchmail)
    second = client.run(fetchmail)
    append(node, user, MESSAGES[1:])
    third = client.run(fetchmail)

    for done in (first, third):
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "UIDL" in first.stdout
    assert second.returncode == 1  # nothing new: the UIDs were seen
    assert client.messages() == [as_lf(m) for m in MESSAGES]
