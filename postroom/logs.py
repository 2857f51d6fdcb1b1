"""Logging set-up and the one-line ``key=value`` event format.

Every log line about a message starts with its queue id, then an event
word from a closed set, then ``key=value`` pairs, so that ``grep QUEUEID``
reconstructs a message's life (Postfix's habit)::

    0QK4W7ZJ2PM3B: received from=<a@example.test> size=10240 nrcpt=2 ...

Lines about a connection start with the event word instead::

    connect client=127.0.0.1:40312 listener=relay:2525

Values with spaces, quotes or ``=`` are double-quoted with backslash
escapes; nothing is ever split across lines. Use ``event()`` to format.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

EVENTS = frozenset(
    {
        "connect",
        "disconnect",
        "received",
        "queued",
        "delivered",
        "deferred",
        "bounced",
        "expired",
        "rejected",
        "removed",
        "held",
        "released",
        "recovered",
        "listening",
        "stopping",
        "auth",
        "tls",
    }
)


def event(word: str, queue_id: str | None = None, **fields: Any) -> str:
    """Format one event line. *word* must be one of ``EVENTS``."""
    assert word in EVENTS, word
    parts = [f"{queue_id}: {word}" if queue_id else word]
    for key, value in fields.items():
        if value is None:
            continue
        parts.append(f"{key}={quote(value)}")
    return " ".join(parts)


def quote(value: Any) -> str:
    text = str(value)
    if text and not any(c in text for c in ' "=\\\r\n\t'):
        return text
    escaped = (
        text.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\r", "\\r")
        .replace("\n", "\\n")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'


def setup(level: str = "info") -> None:
    """Send all of Postroom's logs to stderr, one line each."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger("postroom")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
