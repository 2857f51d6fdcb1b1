"""Helpers for tests of the HTTP API: the in-process handle tests get
from the ``api`` fixture, and request bodies they share."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import sqlalchemy as sa

from postroom.api.context import ApiContext
from postroom.queue.store import QueueStore

# A fixed "now" for the API's clock: send_at values are relative to it.
NOW = 1_800_000_000.0


@dataclass
class Api:
    client: httpx.AsyncClient
    engine: sa.Engine
    queue: QueueStore
    context: ApiContext
    make_key: Callable[..., str]

    def headers(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}


PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(64))
PDF = b"%PDF-1.4\n" + bytes(range(256))


def minimal(**overrides: Any) -> dict[str, Any]:
    """The smallest valid Mail Send body, with top-level *overrides*."""
    body: dict[str, Any] = {
        "personalizations": [{"to": [{"email": "ann@example.net"}]}],
        "from": {"email": "app@sender.test", "name": "The App"},
        "subject": "Hello",
        "content": [{"type": "text/plain", "value": "Hi there"}],
    }
    body.update(overrides)
    return body


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
