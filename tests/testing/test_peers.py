"""The peer helpers work against the real programs: a private Postfix
takes a message on loopback and stops, smtp-source's count is read, and
the instance can relay to an smtp-sink.

Skipped only where Postfix is not installed (scripts/install-peers.sh
installs it), and even then failed under CI, like every peer test
(``missing_peer`` in tests/conftest.py); anywhere else a failure here
means the benchmarks and the interoperability tests would fail too.
"""

from __future__ import annotations

import shutil
import smtplib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from postroom.testing import peers

pytestmark = pytest.mark.peers

MESSAGE = b"Subject: peers test\r\n\r\nhello\r\n"


@pytest.fixture
def root(missing_peer: Callable[[str], NoReturn]) -> Iterator[Path]:
    if not peers.postfix_available():
        missing_peer("Postfix is not installed")
    # Not tmp_path: pytest makes it 0700, which Postfix's daemons,
    # running as user postfix, cannot enter.
    path = peers.make_root()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_private_postfix_accepts_one_message_and_stops(root: Path) -> None:
    instance = peers.start_postfix(root / "postfix", peers.free_port(),
                                   lifetime=120)
    try:
        assert instance.daemon.pids()
        with smtplib.SMTP(peers.LOOPBACK, instance.port, timeout=10,
                          local_hostname=peers.HOSTNAME) as client:
            refused = client.sendmail(peers.SENDER, [peers.RECIPIENT],
                                      MESSAGE)
        assert refused == {}
        # Acceptance only: the message waits in the hold queue.
        assert wait_until(lambda: instance.queued("hold") == 1)
    finally:
        instance.stop()

    assert instance.daemon.pids() == []
    assert instance.daemon.process.returncode is not None


def test_smtp_source_count_against_postfix(root: Path) -> None:
    with peers.start_postfix(root / "postfix", peers.free_port(),
                             lifetime=120) as instance:
        result = peers.run_smtp_source(instance.port, messages=40,
                                       sessions=4, size=2000, timeout=60)

    assert (result.returncode, result.stderr) == (0, "")
    assert result.messages == 40
    assert result.rate > 0


def test_postfix_relays_to_smtp_sink(root: Path) -> None:
    sink = peers.start_smtp_sink(root / "sink", peers.free_port(),
                                 lifetime=120)
    with sink, peers.start_postfix(root / "postfix", peers.free_port(),
                                   relay_to=sink.port,
                                   lifetime=120) as instance:
        with smtplib.SMTP(peers.LOOPBACK, instance.port, timeout=10,
                          local_hostname=peers.HOSTNAME) as client:
            client.sendmail(peers.SENDER, [peers.RECIPIENT], MESSAGE)

        assert wait_until(lambda: sink.messages() == 1)


@pytest.mark.parametrize(("stdout", "count"), [
    (b"", 0),
    (b"\r1\r2\r3\r\n", 3),
    (b"\r1\r2\r2000\r\n", 2000),
    (b"\r7", 7),
])
def test_parse_source_count(stdout: bytes, count: int) -> None:
    assert peers.parse_source_count(stdout) == count
