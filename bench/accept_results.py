"""What the acceptance benchmark collects, and how it is shown.

``smtp_accept`` fills a ``Results`` phase by phase; ``render`` turns it
into the tables and target lines printed at the end, ``as_json`` into
the file kept in bench/out/.
"""

from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import probes, report
from postroom.testing import peers

SIZES = (1024, 10 * 1024, 100 * 1024)
SESSIONS = 20


@dataclass(frozen=True)
class Cell:
    """One column of the driver's matrix: message size x connection use."""

    size: int
    reuse: bool

    @property
    def key(self) -> str:
        return f"{self.size // 1024}KB-{'many' if self.reuse else 'one'}"

    @property
    def label(self) -> str:
        use = "many msgs/conn" if self.reuse else "1 msg/conn"
        return f"{self.size // 1024} KB, {use}"


@dataclass(frozen=True)
class Plan:
    servers: tuple[str, ...]
    repeat: int
    seconds: float
    trials: int
    idle: int
    sessions: int = SESSIONS
    pause: float = 0.2

    @property
    def cells(self) -> list[Cell]:
        return [Cell(size, reuse) for size in SIZES for reuse in (True, False)]


@dataclass
class Run:
    """One smtp-source run; round 0 is calibration, not counted."""

    server: str
    cell: str
    round: int
    asked: int
    messages: int
    seconds: float
    error: str = ""

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0


@dataclass
class Results:
    plan: Plan
    descriptions: dict[str, str] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    memory: dict[str, probes.IdleMemory] = field(default_factory=dict)
    runs: list[Run] = field(default_factory=list)
    latency: dict[str, list[float]] = field(default_factory=dict)
    # One-minute load average when the benchmark started and ended: a
    # busy machine shows in every number, though less in the ratios.
    load: list[float] = field(default_factory=list)

    def rate(self, server: str, cell: Cell) -> float | None:
        rates = [r.rate for r in self.runs if r.server == server
                 and r.cell == cell.key and r.round > 0 and not r.error]
        return report.median(rates)

    def latency_ms(self, server: str) -> float | None:
        found = report.median(self.latency.get(server, []))
        return None if found is None else found * 1000


# -- presentation -----------------------------------------------------------


def verdicts(results: Results) -> list[report.Verdict]:
    ten_kb = Cell(10 * 1024, reuse=True)
    ours = results.rate("postroom", ten_kb)
    found = []
    for peer in ("postfix", "aiosmtpd"):
        theirs = results.rate(peer, ten_kb)
        found.append(report.Verdict(
            f"durable acceptance of 10 KB messages >= 5x {peer}",
            report.ratio(ours, theirs), 5.0, "min",
            f"{report.ratio_text(report.ratio(ours, theirs))}: "
            f"{report.rate_text(ours)} vs {report.rate_text(theirs)} msg/s, "
            f"many msgs/conn"))
    ours_ms, theirs_ms = (results.latency_ms("postroom"),
                          results.latency_ms("postfix"))
    found.append(report.Verdict(
        "single-message session latency <= 0.5x Postfix's",
        report.ratio(ours_ms, theirs_ms), 0.5, "max",
        f"{report.ratio_text(report.ratio(ours_ms, theirs_ms))}: "
        f"{_ms(ours_ms)} vs {_ms(theirs_ms)} ms"))
    # Judged on the larger of the RSS and PSS growth: with forked
    # workers, a page copied on write grows PSS but not RSS.
    memory = results.memory.get("postroom")
    per_conn, detail = None, "-"
    if memory is not None:
        per_conn = max(memory.rss_per_connection_kb,
                       memory.pss_per_connection_kb)
        detail = (f"{memory.rss_per_connection_kb:.1f} KB RSS, "
                  f"{memory.pss_per_connection_kb:.1f} KB PSS")
    found.append(report.Verdict(
        "one idle connection < 20 KB", per_conn, 20.0, "below", detail))
    return found


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render(results: Results) -> str:
    """The report printed at the end of a run."""
    plan = results.plan
    names = [n for n in plan.servers if n in results.descriptions]
    load = " / ".join(f"{value:.1f}" for value in results.load)
    out = [f"SMTP acceptance benchmark: {os.cpu_count()} CPUs "
           f"(load average at start / end: {load}), "
           f"smtp-source -s {plan.sessions}, median of {plan.repeat} "
           f"run(s) of about {plan.seconds:g} s", ""]
    out += [f"  {name:9} {results.descriptions[name]}" for name in names]
    out += [f"  {name:9} {'ERROR' if name in names else 'NOT RUN'}: "
            f"{why.splitlines()[0]}"
            for name, why in results.failures.items()]
    out += ["", _throughput_table(results, names)]
    out += ["", f"One 1 KB message, one session (connect to 221), "
                f"{plan.trials} trials",
            _latency_table(results, names)]
    out += ["", f"Memory per idle connection ({plan.idle} connections "
                f"that read the greeting; all the server's processes)",
            _memory_table(results, names)]
    out += ["", "Targets (issue 2):"]
    out += [f"  {v.line()}" for v in verdicts(results)]
    return "\n".join(out)


def _throughput_table(results: Results, names: list[str]) -> str:
    # Postroom's ratio to each peer, when Postroom ran.
    peers_of_ours = ([n for n in names if n != "postroom"]
                     if "postroom" in names else [])
    rows = []
    for cell in results.plan.cells:
        ours = results.rate("postroom", cell)
        rows.append([
            cell.label,
            *(report.rate_text(results.rate(n, cell)) for n in names),
            *(report.ratio_text(report.ratio(ours, results.rate(p, cell)))
              for p in peers_of_ours)])
    headers = ["messages/s", *names, *(f"vs {p}" for p in peers_of_ours)]
    return report.table(headers, rows)


def _latency_table(results: Results, names: list[str]) -> str:
    ours = results.latency_ms("postroom")
    rows = []
    for name in names:
        values = sorted(results.latency.get(name, []))
        ms = results.latency_ms(name)
        p90 = values[int(0.9 * (len(values) - 1))] * 1000 if values else None
        ratio = report.ratio(ours, ms) if name != "postroom" else None
        rows.append([name, _ms(ms), _ms(p90), report.ratio_text(ratio)])
    return report.table(["latency", "median ms", "p90 ms",
                         "postroom/server"], rows)


def _memory_table(results: Results, names: list[str]) -> str:
    rows = []
    for name in names:
        m = results.memory.get(name)
        if m is None:
            continue
        rows.append([name, f"{m.processes_before}/{m.processes_after}",
                     f"{m.rss_before_kb / 1024:.1f}",
                     f"{m.rss_after_kb / 1024:.1f}",
                     f"{m.rss_per_connection_kb:.1f}",
                     f"{m.pss_per_connection_kb:.1f}"])
    return report.table(["memory", "processes", "RSS before MB",
                         "RSS after MB", "RSS KB/conn", "PSS KB/conn"], rows)


def as_json(results: Results, work: Path) -> dict[str, Any]:
    plan = results.plan
    versions = {}
    for package in ("aiosmtpd", "uvloop", "postroom"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    with contextlib.suppress(peers.PeerError, OSError, ValueError):
        versions["postfix"] = peers.postfix_version()
    return {
        "benchmark": "smtp_accept",
        "host": {"cpus": os.cpu_count(), "kernel": platform.release(),
                 "python": platform.python_version(),
                 "loadavg_start_end": results.load,
                 "work_filesystem": report.filesystem_type(work)},
        "versions": versions,
        "plan": {**asdict(plan),
                 "cells": [cell.key for cell in plan.cells]},
        "servers": results.descriptions,
        "failures": results.failures,
        "throughput": {
            "medians": {n: {c.key: results.rate(n, c) for c in plan.cells}
                        for n in results.descriptions},
            "runs": [{**asdict(r), "rate": r.rate} for r in results.runs],
        },
        "latency_ms": {
            n: {"median": results.latency_ms(n),
                "trials": [v * 1000 for v in values]}
            for n, values in results.latency.items()},
        "idle_memory": {
            n: {**asdict(m), "rss_per_connection_kb": m.rss_per_connection_kb,
                "pss_per_connection_kb": m.pss_per_connection_kb}
            for n, m in results.memory.items()},
        "targets": [v.as_json() for v in verdicts(results)],
    }
