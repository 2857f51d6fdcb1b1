"""Acceptance benchmark: how fast servers take mail durably (issue 2).

Every server in ``--servers`` is started by this script on a loopback
port and measured in turn with the same driver, Postfix's smtp-source.
The phases:

1. Memory. Each server alone, freshly started and warmed by one
   session: its resident memory (all its processes) before and while
   ``--idle`` connections that have read the greeting sit idle.
2. Throughput. All servers started afresh. A cell is a message size
   (1, 10, 100 KB) and a way of using connections: many messages per
   connection (``-d``: each of the 20 sessions keeps its connection for
   all its messages) or one message per connection. Each server is
   first calibrated on each cell: runs not counted (they double as a
   warm-up) that find the message count taking about ``--seconds``
   seconds at that server's speed. Then ``--repeat`` rounds; each round
   runs every cell on every server once, the servers in an order that
   rotates from cell to cell and round to round, so that a burst of
   machine noise hits them all alike. The result is the median rate.
3. Latency. One 1 KB message in one session (connect to the reply to
   QUIT), timed from a Python socket; sessions alternate among the
   servers; the median of ``--trials``.

Output: tables on stdout (progress on stderr), the issue's targets as
PASS/FAIL lines, and every raw number in bench/out/smtp_accept-*.json.
The exit status is 0 unless a server failed to start or a run failed;
missing a target is reported, not an error.

Run: ``python -m bench.smtp_accept [--quick] [--servers a,b] ...``;
bench/README.md explains the choices.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench import probes, report, servers
from bench.accept_results import Cell, Plan, Results, Run, as_json, render
from postroom.testing import peers

_STARTED = time.monotonic()


def progress(text: str) -> None:
    elapsed = time.monotonic() - _STARTED
    print(f"{elapsed:6.1f}s {text}", file=sys.stderr, flush=True)


def rotated(items: Sequence[Any], by: int) -> list[Any]:
    by %= max(len(items), 1)
    return [*items[by:], *items[:by]]


# -- servers --------------------------------------------------------------


@contextlib.contextmanager
def running(names: Sequence[str], work: Path, results: Results,
            options: servers.Options) -> Iterator[dict[str, servers.Server]]:
    """Start the named servers (skipping and recording any that fails)
    and stop them all on the way out, whatever happens."""
    started: dict[str, servers.Server] = {}
    try:
        for name in names:
            try:
                server = servers.STARTERS[name](work / name, options)
            except (peers.PeerError, OSError) as e:
                results.failures[name] = str(e)
                progress(f"[{name}] did not start: {e}")
                continue
            results.descriptions[name] = server.description
            started[name] = server
        yield started
    finally:
        for server in started.values():
            server.stop()


# -- phase 1: memory ------------------------------------------------------


def measure_memory(plan: Plan, work: Path, results: Results,
                   options: servers.Options) -> None:
    payload = probes.message(1024)
    for name in plan.servers:
        with running([name], work / "memory", results, options) as live:
            if name not in live:
                continue
            server = live[name]
            try:
                probes.session_seconds(server.port, payload)
                found = probes.idle_memory(server.pids, server.port, plan.idle)
            except (probes.ProbeError, OSError) as e:
                results.failures[name] = f"idle-memory probe: {e}"
                progress(f"[{name}] idle-memory probe failed: {e}")
                continue
            results.memory[name] = found
            progress(f"[{name}] {plan.idle} idle connections: "
                     f"{found.rss_per_connection_kb:.1f} KB RSS each")


# -- phase 2: throughput --------------------------------------------------


def drive(server: servers.Server, cell: Cell, messages: int, plan: Plan,
          round_: int) -> Run:
    """One smtp-source run against ``server``."""
    # Write back what earlier runs left dirty, untimed, so that it is
    # not charged to whichever server happens to run next.
    os.sync()
    result = peers.run_smtp_source(
        server.port, messages=messages, sessions=plan.sessions,
        size=cell.size, reuse_connection=cell.reuse,
        timeout=max(120.0, 30 * plan.seconds))
    error = ""
    if result.returncode != 0 or result.messages != messages:
        error = (f"exit {result.returncode}, {result.messages} of "
                 f"{messages} accepted: {result.stderr[-300:]}")
    time.sleep(plan.pause)
    return Run(server.name, cell.key, round_, messages, result.messages,
               result.seconds, error)


def calibrate(server: servers.Server, cell: Cell, plan: Plan,
              results: Results) -> int | None:
    """The message count for runs of about ``plan.seconds`` seconds,
    or None if the server failed on this cell."""
    messages = plan.sessions * 5
    for _ in range(4):
        run = drive(server, cell, messages, plan, 0)
        results.runs.append(run)
        if run.error:
            progress(f"[{server.name}] {cell.label}: {run.error}")
            return None
        # A short run overstates per-run costs (connection set-up, the
        # last sessions finishing): go on until one lasts long enough.
        if run.seconds >= plan.seconds / 2:
            break
        messages = _whole_sessions(run.rate * plan.seconds * 0.75, plan)
    return _whole_sessions(run.rate * plan.seconds, plan)


def _whole_sessions(messages: float, plan: Plan) -> int:
    # A multiple of the session count, so that with -d every session
    # sends as many messages as the others and none finishes early.
    per_session = min(max(math.ceil(messages / plan.sessions), 2), 50_000)
    return per_session * plan.sessions


def measure_throughput(live: dict[str, servers.Server], plan: Plan,
                       results: Results) -> None:
    counts: dict[tuple[str, str], int] = {}
    for cell in plan.cells:
        for name, server in live.items():
            found = calibrate(server, cell, plan, results)
            if found is not None:
                counts[name, cell.key] = found
                progress(f"[{name}] {cell.label}: {found} messages a run")

    for round_ in range(1, plan.repeat + 1):
        for index, cell in enumerate(plan.cells):
            for server in rotated(list(live.values()), round_ + index):
                messages = counts.get((server.name, cell.key))
                if messages is None:
                    continue
                run = drive(server, cell, messages, plan, round_)
                results.runs.append(run)
                status = run.error or f"{run.rate:,.0f} msg/s"
                progress(f"[{server.name}] round {round_} {cell.label}: "
                         f"{status} ({run.messages} in {run.seconds:.2f}s)")


# -- phase 3: latency -----------------------------------------------------


def measure_latency(live: dict[str, servers.Server], plan: Plan,
                    results: Results) -> None:
    payload = probes.message(1024)
    os.sync()
    healthy = []
    for server in live.values():
        try:
            for _ in range(3):  # warm-up
                probes.session_seconds(server.port, payload)
        except (probes.ProbeError, OSError) as e:
            results.failures[server.name] = f"latency probe: {e}"
            progress(f"[{server.name}] latency probe failed: {e}")
            continue
        healthy.append(server)

    for trial in range(plan.trials):
        for server in rotated(healthy, trial):
            try:
                seconds = probes.session_seconds(server.port, payload)
            except (probes.ProbeError, OSError) as e:
                results.failures[server.name] = f"latency probe: {e}"
                progress(f"[{server.name}] latency probe failed: {e}")
                healthy.remove(server)
                continue
            results.latency.setdefault(server.name, []).append(seconds)
    for name in results.latency:
        progress(f"[{name}] one-message session: "
                 f"{results.latency_ms(name) or 0:.2f} ms median")

# -- main -----------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.smtp_accept",
        description="Durable SMTP acceptance: Postroom against Postfix "
                    "and aiosmtpd, all on loopback.")
    parser.add_argument("--servers", default="postroom,postfix,aiosmtpd",
                        help="comma-separated, from: "
                             + ", ".join(servers.STARTERS))
    parser.add_argument("--quick", action="store_true",
                        help="short runs, one round (smoke test, ~1 min)")
    parser.add_argument("--repeat", type=int, help="rounds (default 3)")
    parser.add_argument("--seconds", type=float,
                        help="length of one run (default 2)")
    parser.add_argument("--trials", type=int,
                        help="latency sessions per server (default 50)")
    parser.add_argument("--idle", type=int,
                        help="idle connections for the memory probe "
                             "(default 1000)")
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="where to write results (default "
                             "bench/out/smtp_accept-<time>.json)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work directory (queues, logs)")
    args = parser.parse_args(argv)
    unknown = set(args.servers.split(",")) - set(servers.STARTERS)
    if unknown:
        parser.error(f"unknown server(s): {', '.join(sorted(unknown))}")
    return args


def make_plan(args: argparse.Namespace) -> Plan:
    quick = args.quick
    return Plan(
        servers=tuple(args.servers.split(",")),
        repeat=args.repeat or (1 if quick else 3),
        seconds=args.seconds or (0.3 if quick else 2.0),
        trials=args.trials or (10 if quick else 50),
        idle=args.idle or (200 if quick else 1000))

def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = make_plan(args)
    if not peers.postfix_available():
        print("smtp_accept: Postfix's tools are missing "
              "(scripts/install-peers.sh)", file=sys.stderr)
        return 2
    probes.raise_file_limit(2 * plan.idle + 1024)

    # SIGTERM unwinds like Ctrl-C, so the finally clauses stop servers.
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    work = peers.make_root("postroom-bench-")
    if report.filesystem_type(work) in ("tmpfs", "ramfs"):
        progress(f"warning: {work} is on a RAM filesystem, where fsync "
                 f"costs nothing; the durable numbers mean little")
    # Servers end by themselves if this script is killed outright.
    options = servers.Options(lifetime=3600.0, max_connections=plan.idle)
    results = Results(plan, load=[os.getloadavg()[0]])
    if results.load[0] > (os.cpu_count() or 1):
        progress(f"warning: load average {results.load[0]:.1f} already "
                 f"exceeds the CPU count; expect noisy numbers")
    started = time.monotonic()
    try:
        measure_memory(plan, work, results, options)
        with running(plan.servers, work / "main", results,
                     options) as live:
            measure_throughput(live, plan, results)
            measure_latency(live, plan, results)
    except KeyboardInterrupt:
        progress("interrupted; servers stopped, no results written")
        return 130
    finally:
        if args.keep:
            progress(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    results.load.append(os.getloadavg()[0])
    print(render(results))
    path = report.write_json("smtp_accept", as_json(results, work), args.json)
    print(f"\nresults: {path} ({time.monotonic() - started:.0f} s)")
    failed = results.failures or any(r.error for r in results.runs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
