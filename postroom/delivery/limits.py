"""Per-destination limits: what applies to a destination, and rate
limiting by token buckets.

A destination is a recipient domain (``Router.destination``). Its
limits come from three layers, each overriding the one before field by
field: the ``[delivery]`` defaults, the preset it takes (named by its
``[delivery.destinations."DOMAIN"]`` table, or else by the ``[domains]``
map of ``presets.toml``), and that table's own fields. Zero means "not
set here" at the two upper layers, and "no limit" for the rates.

Rates are token buckets (capacity = the per-period count, refilled
continuously), so a burst up to the budget goes at once and the rest is
spread out; the clock is injected, so tests step it.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass, fields
from importlib import resources
from typing import Any

from postroom.config import DeliveryConfig, DestinationPolicy
from postroom.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Limits:
    """The effective limits of one destination (zero rate = unlimited)."""

    max_connections: int
    max_messages_per_connection: int
    max_recipients_per_message: int
    messages_per_minute: int = 0
    messages_per_hour: int = 0
    connections_per_minute: int = 0
    tls: str = ""
    preset: str = ""


_FIELDS = tuple(
    f.name for f in fields(DestinationPolicy) if f.name not in ("preset", "tls")
)


def load_presets() -> dict[str, Any]:
    """The shipped ``presets.toml`` as a dict (presets and ``domains``)."""
    text = resources.files("postroom.delivery").joinpath("presets.toml").read_text()
    return tomllib.loads(text)


class LimitBook:
    """Answers ``limits(destination)`` from the configuration, cached."""

    def __init__(
        self, config: DeliveryConfig, presets: dict[str, Any] | None = None
    ) -> None:
        self._config = config
        self._presets = load_presets() if presets is None else presets
        self._domains: dict[str, str] = dict(self._presets.get("domains", {}))
        self._cache: dict[str, Limits] = {}
        for name, policy in config.destinations.items():
            if policy.preset and policy.preset not in self._presets:
                raise ConfigError(
                    f"delivery.destinations.{name}.preset: no preset "
                    f"{policy.preset!r} (see postroom/delivery/presets.toml)"
                )

    def limits(self, destination: str) -> Limits:
        cached = self._cache.get(destination)
        if cached is not None:
            return cached
        config = self._config
        values: dict[str, Any] = {
            "max_connections": config.max_connections_per_destination,
            "max_messages_per_connection": config.max_messages_per_connection,
            "max_recipients_per_message": config.max_recipients_per_message,
        }
        own = config.destinations.get(destination)
        preset_name = (own.preset if own else "") or self._domains.get(destination, "")
        for key, value in self._presets.get(preset_name, {}).items():
            if key in _FIELDS and value:
                values[key] = int(value)
        if own is not None:
            for key in _FIELDS:
                value = getattr(own, key)
                if value:
                    values[key] = value
        limits = Limits(**values, tls=own.tls if own else "", preset=preset_name)
        self._cache[destination] = limits
        return limits


class TokenBucket:
    """*rate* tokens per *period* seconds, at most *rate* saved up."""

    def __init__(self, rate: int, period: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.period = period
        self._clock = clock
        self._tokens = float(rate)
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._stamp)
        self._stamp = now
        self._tokens = min(
            float(self.rate), self._tokens + elapsed * self.rate / self.period
        )

    def wait(self) -> float:
        """Seconds until a token is available (0 if one is now)."""
        self._refill()
        if self._tokens >= 1:
            return 0.0
        return (1 - self._tokens) * self.period / self.rate

    def take(self) -> None:
        self._refill()
        self._tokens -= 1


class Throttle:
    """The rate limits of one destination: messages per minute and per
    hour, connections per minute. A zero rate is no bucket at all."""

    def __init__(self, limits: Limits, clock: Callable[[], float]) -> None:
        self._messages = [
            TokenBucket(rate, period, clock)
            for rate, period in (
                (limits.messages_per_minute, 60.0),
                (limits.messages_per_hour, 3600.0),
            )
            if rate
        ]
        self._connections = (
            TokenBucket(limits.connections_per_minute, 60.0, clock)
            if limits.connections_per_minute
            else None
        )

    def message_wait(self) -> float:
        return max((b.wait() for b in self._messages), default=0.0)

    def take_message(self) -> None:
        for bucket in self._messages:
            bucket.take()

    def connection_wait(self) -> float:
        return self._connections.wait() if self._connections else 0.0

    def take_connection(self) -> None:
        if self._connections:
            self._connections.take()
