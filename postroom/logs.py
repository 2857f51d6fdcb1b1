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
import os
import re
import sys
import time
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
        "notified",
        "dkim",
        "flushed",
        "listening",
        "stopping",
        "auth",
        "tls",
        # A contact confirmed its subscription (campaigns/optin.py).
        "confirmed",
        # A suppressed recipient left out of a message (api/mailsend/suppress.py).
        "dropped",
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


# Anything that would break a line or a key=value pair apart.
_UNSAFE = re.compile(r'[\s"=\\\x00-\x1f\x7f]')
_ESCAPES = {c: f"\\x{c:02x}" for c in range(0x20)} | {
    0x7F: "\\x7f",
    ord("\\"): "\\\\",
    ord('"'): '\\"',
    ord("\r"): "\\r",
    ord("\n"): "\\n",
    ord("\t"): "\\t",
}


def quote(value: Any) -> str:
    """*value* as it goes after ``key=``: bare when safe, else in double
    quotes with backslash escapes, never spanning lines."""
    text = str(value)
    if text and _UNSAFE.search(text) is None:
        return text
    return f'"{text.translate(_ESCAPES)}"'


class _Formatter(logging.Formatter):
    """``<time> <LEVEL> <logger>[<pid>]: <message>``, cheaply.

    The standard formatter calls strftime for every record; at thousands
    of lines a second many share a second, so the text is cached. The
    pid is read per record from a cache that forked workers refresh.
    """

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        line = (
            f"{self._stamp},{int(record.msecs):03d} {record.levelname} "
            f"{record.name}[{_pid}]: {record.getMessage()}"
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


_pid = os.getpid()


def _refresh_pid() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_refresh_pid)


def setup(level: str = "info") -> None:
    """Send all of Postroom's logs to stderr, one line each."""
    # Documented switches that skip per-record work we never print: the
    # caller's frame (a stack walk), thread and process names.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger("postroom")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
