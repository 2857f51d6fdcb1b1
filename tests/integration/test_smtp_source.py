"""A bounded load from Postfix's smtp-source, then an exact count.

2,000 messages of 2 KiB over 20 parallel sessions, each session keeping
its connection (``-d``). Afterwards every one of them must be in the
queue, and the log must hold one ``received`` line per message, each
starting with the queue id the client was given: nothing lost, nothing
counted twice. smtp-source is told its HELO name (``-M``) so that it
never asks the machine for one, and it runs under ``timeout``.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections import Counter
from collections.abc import Callable

import pytest

from postroom import ids
from postroom.testing import peers
from postroom.testing.process import LOOPBACK, PostroomProcess

pytestmark = pytest.mark.peers

MESSAGES = 2000
SESSIONS = 20
SIZE = 2048
SENDER = "a@x.test"
RECIPIENT = "b@y.test"


def test_2000_messages_over_20_sessions(
        require_tool: Callable[[str], str],
        postroom_server: PostroomProcess) -> None:
    smtp_source = require_tool("smtp-source")
    argv = ["timeout", "-k", "2", "60", smtp_source, "-c", "-d",
            "-s", str(SESSIONS), "-m", str(MESSAGES), "-l", str(SIZE),
            "-M", "source.test", "-f", SENDER, "-t", RECIPIENT,
            f"{LOOPBACK}:{postroom_server.relay_port}"]

    done = subprocess.run(argv, capture_output=True, timeout=70)

    # smtp-source stops at the first reply that is not positive, so its
    # own count is the first check that all 2,000 were accepted.
    assert done.returncode == 0, done.stderr
    assert done.stderr == b""
    assert peers.parse_source_count(done.stdout) == MESSAGES

    # Every message is queued, once, from this sender to this recipient.
    listing = postroom_server.cli("queue", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    rows = json.loads(listing.stdout)
    assert len(rows) == MESSAGES
    assert {row["sender"] for row in rows} == {SENDER}
    assert {r["address"] for row in rows for r in row["recipients"]} == {
        RECIPIENT}
    queued = {row["queue_id"] for row in rows}
    assert len(queued) == MESSAGES

    # One "received" line per message, each led by its queue id.
    received = postroom_server.log_events("received")
    assert len(received) == MESSAGES
    logged = [line.split(":", 1)[0] for line in received]
    assert all(ids.is_queue_id(queue_id) for queue_id in logged)
    assert set(logged) == queued
    assert all(f"sender=<{SENDER}>" in line and " nrcpt=1 " in line
               for line in received)

    # The sessions account for every message between them.
    per_session: Counter[str] = Counter()
    for line in postroom_server.log_events("disconnect"):
        if " helo=source.test " in line:
            client = re.search(r" client=(\S+)", line)
            messages = re.search(r" messages=(\d+)", line)
            assert client and messages, line
            per_session[client.group(1)] += int(messages.group(1))
    assert len(per_session) == SESSIONS
    assert sum(per_session.values()) == MESSAGES

    # Spot checks of content: a sample read back through the store.
    with postroom_server.queue() as queue:
        for queue_id in sorted(queued)[::250]:
            content = queue.read_content(queue_id)
            assert content.startswith(b"Received: from source.test ")
            assert len(content) > SIZE
