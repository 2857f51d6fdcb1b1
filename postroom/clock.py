"""Wall-clock time, injectable.

The delivery engine schedules retries, expiry and delay notices in epoch
seconds that are stored in the queue tables; tests replace ``Clock``
with ``postroom.testing.clock.FakeClock`` and step time by days without
sleeping. Timeouts on sockets are real time and stay with asyncio.
"""

from __future__ import annotations

import time


class Clock:
    """The system's wall clock."""

    def time(self) -> float:
        return time.time()
