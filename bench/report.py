"""Plain-text tables, target verdicts and JSON files for benchmark results.

Nothing here measures; it formats what the benchmark modules collected,
so the relay and mailbox benchmarks can print the same way.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "out"


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def ratio(ours: float | None, theirs: float | None) -> float | None:
    if ours is None or not theirs:
        return None
    return ours / theirs


def rate_text(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def ratio_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell; the first left-aligned, the
    rest right-aligned (they hold numbers)."""
    widths = [max(len(str(row[i])) for row in [headers, *rows])
              for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        first = str(cells[0]).ljust(widths[0])
        rest = (str(c).rjust(w) for c, w in zip(cells[1:], widths[1:],
                                                strict=True))
        return "  ".join([first, *rest]).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


@dataclass(frozen=True)
class Verdict:
    """One target of an issue, checked against a measurement."""

    target: str
    value: float | None
    limit: float
    # "min": value must be >= limit; "max": value must be <= limit;
    # "below": value must be < limit.
    kind: str
    detail: str = ""

    @property
    def result(self) -> str:
        if self.value is None:
            return "SKIP"
        passed = {"min": self.value >= self.limit,
                  "max": self.value <= self.limit,
                  "below": self.value < self.limit}[self.kind]
        return "PASS" if passed else "FAIL"

    def line(self) -> str:
        detail = f" ({self.detail})" if self.detail else ""
        return f"{self.result}  {self.target}{detail}"

    def as_json(self) -> dict[str, Any]:
        return {"target": self.target, "value": self.value,
                "limit": self.limit, "kind": self.kind,
                "result": self.result, "detail": self.detail}


def write_json(name: str, data: dict[str, Any],
               path: Path | None = None) -> Path:
    """Write ``data`` to PATH, by default bench/out/NAME-<UTC time>.json."""
    if path is None:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        path = OUT / f"{name}-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path


def filesystem_type(path: Path) -> str:
    """The type of the filesystem holding ``path`` (from /proc/mounts)."""
    best, kind = "", "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            mount_point, fs_type = line.split()[1:3]
            if (str(path).startswith(mount_point)
                    and len(mount_point) > len(best)):
                best, kind = mount_point, fs_type
    return kind
