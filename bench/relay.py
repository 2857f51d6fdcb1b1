"""Relay benchmark: smtp-source → server → smtp-sink, end to end (issue 3).

Each server takes mail from Postfix's smtp-source on loopback and
relays every message to an smtp-sink of its own; the clock runs from
smtp-source's start until the sink holds the last message. The sink
writes each message to a file of its own (``smtp-sink -d``), so the
count is exact at any moment, not only when a session ends (Postfix
keeps idle connections cached for seconds, which a session-end count
would charge to it).

Servers, both with default settings apart from where mail goes:

postroom  ``postroom serve`` (durable queue, default workers and
          delivery limits) with ``delivery.routes = {"*" = sink}``.
postfix   A private Postfix with ``relayhost = [127.0.0.1]:sink``.

A round runs both servers once, in an order that alternates from round
to round so machine noise hits both alike; the result is the median of
``--repeat`` rounds. Each server is warmed up by one unmeasured run.
The issue's target: Postroom at least 3x Postfix's messages/s.

Run: ``python -m bench.relay [--quick] [--messages N] [--repeat R]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from postroom.testing import peers

OUT = Path(__file__).resolve().parent / "out"
SHM = "/dev/shm" if os.path.isdir("/dev/shm") else None
SIZE = 10 * 1024
SESSIONS = 20
TARGET = 3.0


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass
class Relay:
    """A server under test with the sink it relays to."""

    name: str
    port: int
    dump: Path
    stop: Callable[[], None]
    _offset: int = 0
    _count: int = 0
    _tail: bytes = b""

    def delivered(self) -> int:
        """Messages in the sink's dump so far (read incrementally)."""
        try:
            with open(self.dump, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return 0
        self._offset += len(data)
        window = self._tail + data
        self._count += window.count(MARK) - self._tail.count(MARK)
        self._tail = window[-len(MARK) :]
        return self._count

    def clear(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.dump)
        self._offset = self._count = 0
        self._tail = b""


# smtp-sink starts each transaction in its dump with the client's
# address; the bench's message bodies never contain these bytes.
MARK = b"X-Client-Addr: "


def start_sink(work: Path) -> tuple[peers.SmtpSink, Path]:
    """An smtp-sink that appends every message to one file in memory
    (/dev/shm): files on disk made the sink, not the servers, the
    bottleneck."""
    shm = Path(tempfile.mkdtemp(prefix="postroom-bench-sink-", dir=SHM))
    os.chmod(shm, 0o777)  # smtp-sink runs as Postfix's mail owner
    sink = peers.start_smtp_sink(
        work, peers.free_port(), extra_args=["-D", f"{shm}/dump"]
    )
    return sink, shm / "dump"


POSTROOM_CONFIG = """\
data_dir = "{data_dir}"
hostname = "{hostname}"

[smtp]
listeners = [{{kind = "relay", address = "{address}"}}]
trusted_networks = ["127.0.0.0/8"]
shutdown_grace = 5.0

[delivery]
routes = {{"*" = "127.0.0.1:{sink_port}"}}
# Nothing is resolved (the route is an address) and nothing leaves
# loopback; the nameserver is one that does not exist, to make sure.
nameservers = ["127.0.0.1:9"]
allowed_networks = ["127.0.0.0/8"]
mta_sts = false
"""


def start_postroom(work: Path) -> Relay:
    work.mkdir(parents=True, exist_ok=True)
    sink, dump = start_sink(work / "sink")
    port = peers.free_port()
    config = work / "postroom.toml"
    config.write_text(
        POSTROOM_CONFIG.format(
            data_dir=work / "data",
            hostname=peers.HOSTNAME,
            address=f"{peers.LOOPBACK}:{port}",
            sink_port=sink.port,
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM_")}
    argv = [sys.executable, "-m", "postroom", "-c", str(config), "serve"]
    daemon = peers.start_daemon(
        "postroom", argv, env=env, cwd=work, log_path=work / "postroom.log",
        lifetime=1800.0,
    )
    peers.wait_for_banner(port, timeout=60.0, daemon=daemon)

    def stop() -> None:
        daemon.stop()
        sink.stop()
        shutil.rmtree(dump.parent, ignore_errors=True)

    return Relay("postroom", port, dump, stop)


def start_postfix(work: Path) -> Relay:
    sink, dump = start_sink(work / "sink")
    root = peers.make_root()
    instance = peers.start_postfix(root, peers.free_port(), relay_to=sink.port)

    def stop() -> None:
        instance.stop()
        sink.stop()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(dump.parent, ignore_errors=True)

    return Relay("postfix", instance.port, dump, stop)


def run_once(relay: Relay, messages: int, timeout: float = 600.0) -> float:
    """Messages per second, from smtp-source's start to the last one
    in the sink."""
    relay.clear()
    started = time.perf_counter()
    source = peers.run_smtp_source(
        relay.port, messages=messages, sessions=SESSIONS, size=SIZE,
        timeout=timeout,
    )
    if source.messages != messages:
        raise RuntimeError(
            f"{relay.name}: smtp-source sent {source.messages} of {messages}: "
            f"{source.stderr}"
        )
    progress(
        f"  [{relay.name}] smtp-source done in {source.seconds:.2f}s, "
        f"{relay.delivered()} relayed by then"
    )
    deadline = started + timeout
    while relay.delivered() < messages:
        if time.perf_counter() > deadline:
            raise RuntimeError(
                f"{relay.name}: {relay.delivered()} of {messages} relayed in time"
            )
        time.sleep(0.01)
    return messages / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="500 messages, 1 round")
    args = parser.parse_args(argv)
    if args.quick:
        args.messages, args.repeat = 500, 1

    # A SIGTERM (make's or timeout's) must still stop what we started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    # Searchable by Postfix's mail owner, which smtp-sink runs as.
    work = peers.make_root(prefix="postroom-bench-relay-")
    relays: dict[str, Relay] = {}
    rates: dict[str, list[float]] = {"postroom": [], "postfix": []}
    try:
        relays["postroom"] = start_postroom(work / "postroom")
        relays["postfix"] = start_postfix(work / "postfix")
        for name, relay in relays.items():
            progress(f"[{name}] warm-up")
            run_once(relay, max(200, args.messages // 5))
        for round_no in range(args.repeat):
            order = ["postroom", "postfix"]
            if round_no % 2:
                order.reverse()
            for name in order:
                rate = run_once(relays[name], args.messages)
                rates[name].append(rate)
                progress(f"[{name}] round {round_no + 1}: {rate:,.0f} msg/s")
    finally:
        for relay in relays.values():
            relay.stop()
        shutil.rmtree(work, ignore_errors=True)

    medians = {name: statistics.median(r) for name, r in rates.items()}
    ratio = medians["postroom"] / medians["postfix"]
    print(f"\nRelay, {SIZE // 1024} KB messages, {SESSIONS} sessions, "
          f"{args.messages} messages, median of {args.repeat}:")
    print(f"  {'server':<10} {'msg/s':>8}  runs")
    for name, median in medians.items():
        runs = ", ".join(f"{r:,.0f}" for r in rates[name])
        print(f"  {name:<10} {median:>8,.0f}  {runs}")
    verdict = "PASS" if ratio >= TARGET else "FAIL"
    print(f"{verdict} relay throughput: Postroom {ratio:.2f}x Postfix "
          f"(target {TARGET:.0f}x)")
    OUT.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (OUT / f"relay-{stamp}.json").write_text(
        json.dumps({"messages": args.messages, "rates": rates,
                    "medians": medians, "ratio": ratio}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
