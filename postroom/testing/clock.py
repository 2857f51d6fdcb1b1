"""A clock that moves only when a test says so."""

from __future__ import annotations

from postroom.clock import Clock


class FakeClock(Clock):
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
