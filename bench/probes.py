"""Measurements besides throughput: one session's latency, and what an
idle connection costs a server in memory.

Both talk to the server with plain blocking sockets on 127.0.0.1, one
command at a time and no pipelining (as smtp-source does), so what they
time is the server, not a client library.
"""

from __future__ import annotations

import contextlib
import io
import resource
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from postroom.testing import peers


class ProbeError(RuntimeError):
    """The server answered something a probe did not expect."""


def message(size: int) -> bytes:
    """A DATA payload, terminator included, with a ``size``-byte body.

    Plain ASCII in 78-character lines (no line starts with a dot), so
    it needs neither 8BITMIME nor dot-stuffing.
    """
    header = (f"From: <{peers.SENDER}>\r\nTo: <{peers.RECIPIENT}>\r\n"
              f"Subject: probe\r\nMessage-ID: <probe@{peers.HOSTNAME}>\r\n"
              f"\r\n").encode("ascii")
    line = b"x" * 76 + b"\r\n"
    body = (line * (size // len(line) + 1))[:size]
    if not body.endswith(b"\r\n"):
        body = body[:-2] + b"\r\n" if len(body) >= 2 else b"\r\n"
    return header + body + b".\r\n"


def _expect(reader: io.BufferedReader, code: int) -> None:
    # Read one reply, all its continuation lines ("250-...") included.
    while True:
        line = reader.readline()
        if not line:
            raise ProbeError(f"connection closed, expected {code}")
        if not line.startswith(str(code).encode()):
            raise ProbeError(f"expected {code}, got {line[:80]!r}")
        if line[3:4] != b"-":
            return


def session_seconds(port: int, payload: bytes,
                    timeout: float = 10.0) -> float:
    """Time one whole session: connect, greeting, EHLO, MAIL, RCPT,
    DATA, the message, QUIT, until the 221 arrives."""
    started = time.perf_counter()
    with socket.create_connection((peers.LOOPBACK, port), timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = sock.makefile("rb")
        _expect(reader, 220)
        for command, code in (
                (f"EHLO {peers.HOSTNAME}", 250),
                (f"MAIL FROM:<{peers.SENDER}>", 250),
                (f"RCPT TO:<{peers.RECIPIENT}>", 250),
                ("DATA", 354)):
            sock.sendall(command.encode("ascii") + b"\r\n")
            _expect(reader, code)
        sock.sendall(payload)
        _expect(reader, 250)
        sock.sendall(b"QUIT\r\n")
        _expect(reader, 221)
        elapsed = time.perf_counter() - started
    return elapsed


# -- memory -----------------------------------------------------------------


def raise_file_limit(needed: int) -> None:
    # Both ends of the idle connections live in processes we start, and
    # they inherit this limit; 1024 is a common default soft limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed,
                                                                    hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _status_kb(pid: int, field: str, filename: str = "status") -> int:
    try:
        text = Path(f"/proc/{pid}/{filename}").read_text()
    except OSError:  # it exited meanwhile
        return 0
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def rss_kb(pids: list[int]) -> int:
    """Sum of VmRSS: counts pages shared between processes once each."""
    return sum(_status_kb(pid, "VmRSS") for pid in pids)


def pss_kb(pids: list[int]) -> int:
    """Sum of Pss: shared pages split among their sharers, so that a
    forking server's children are not each charged its libraries."""
    return sum(_status_kb(pid, "Pss", "smaps_rollup") for pid in pids)


@dataclass(frozen=True)
class IdleMemory:
    """The server's memory before and while holding idle connections."""

    connections: int
    processes_before: int
    processes_after: int
    rss_before_kb: int
    rss_after_kb: int
    pss_before_kb: int
    pss_after_kb: int

    @property
    def rss_per_connection_kb(self) -> float:
        return (self.rss_after_kb - self.rss_before_kb) / self.connections

    @property
    def pss_per_connection_kb(self) -> float:
        return (self.pss_after_kb - self.pss_before_kb) / self.connections


@contextlib.contextmanager
def idle_connections(port: int, count: int, *, batch: int = 100,
                     timeout: float = 30.0) -> Iterator[list[socket.socket]]:
    """Hold ``count`` connections that have read their 220 greeting and
    then say nothing; closed on exit.

    Opened ``batch`` at a time, each batch greeted before the next, so
    that a listen backlog of about 100 never overflows (an overflowing
    SYN is retried only after a second).
    """
    sockets: list[socket.socket] = []
    try:
        while len(sockets) < count:
            opened = [socket.create_connection((peers.LOOPBACK, port),
                                               timeout)
                      for _ in range(min(batch, count - len(sockets)))]
            sockets.extend(opened)
            for sock in opened:
                _read_greeting(sock)
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def _read_greeting(sock: socket.socket) -> None:
    with sock.makefile("rb") as reader:  # closing it leaves sock open
        _expect(reader, 220)


def idle_memory(pids: Callable[[], list[int]], port: int, count: int,
                settle: float = 1.0) -> IdleMemory:
    """Memory of the processes ``pids()`` before and while ``count``
    idle connections are open, read ``settle`` seconds after the last
    greeting (a forking server's children finish starting up)."""
    before = pids()
    rss_before, pss_before = rss_kb(before), pss_kb(before)
    with idle_connections(port, count):
        time.sleep(settle)
        after = pids()
        rss_after, pss_after = rss_kb(after), pss_kb(after)
    return IdleMemory(count, len(before), len(after), rss_before, rss_after,
                      pss_before, pss_after)
