"""Bytes used per user, for quotas.

Usage is the sum of message sizes in every folder's ``new/`` and
``cur/``, read from the ``,S=<size>`` our writers put in each name, so
counting needs directory listings but no stat per file (a file from
another writer without ``,S=`` is stat'd). ``tmp/`` does not count: it
holds messages not yet delivered.

A per-directory cache keyed by the directory's mtime makes repeated
checks (one per RCPT) cost a stat per directory; as in
``messages.py``, an mtime younger than two seconds is not trusted.

The check is advisory across processes: two deliveries that each fit
may together pass the limit by up to one message each. That is what
Dovecot's and Postfix's quotas do too; a hard limit would need a lock
held across every delivery of a user.
"""

from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path

from postroom.mailbox import maildir

_TRUST_NS = 2_000_000_000
# Directories remembered per process (two per folder of every user that
# received mail): beyond this the cache starts afresh rather than grow
# with the number of accounts for the life of the worker.
_CACHE_LIMIT = 100_000

_cache: dict[str, tuple[int, int]] = {}
_cache_lock = threading.Lock()


def usage(user_maildir: Path) -> int:
    """Bytes stored in every folder of the Maildir at *user_maildir*
    (0 when it does not exist yet)."""
    total = 0
    try:
        entries = list(os.scandir(user_maildir))
    except FileNotFoundError:
        return 0
    # Sub-Maildirs are ".Name"; "..deleted-*" is a folder on its way
    # out (MailStore.delete), which a crash may leave behind: not the
    # user's mail any more.
    folders = [user_maildir]
    folders += [
        Path(e.path)
        for e in entries
        if e.name.startswith(".") and not e.name.startswith("..") and e.is_dir()
    ]
    for folder in folders:
        for sub in ("new", "cur"):
            total += _dir_usage(folder / sub)
    return total


def _dir_usage(path: Path) -> int:
    key = str(path)
    try:
        mtime = os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return 0
    with _cache_lock:
        cached = _cache.get(key)
    if cached is not None and cached[0] == mtime:
        return cached[1]

    total = 0
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                base, _info = maildir.split_name(entry.name)
                size = maildir.size_from_name(base)
                if size is None:
                    try:
                        size = entry.stat().st_size
                    except FileNotFoundError:
                        continue
                total += size
    except FileNotFoundError:
        return 0
    if time.time_ns() - mtime >= _TRUST_NS:
        with _cache_lock:
            if len(_cache) >= _CACHE_LIMIT:
                _cache.clear()
            _cache[key] = (mtime, total)
    return total


def parse_size(text: str) -> int:
    """``100M`` -> 104857600. Suffixes K, M, G, T (powers of 1024), an
    optional trailing ``B``; a plain number is bytes; 0 means no limit.
    Raises ValueError naming the text."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    cleaned = text.strip().upper().removesuffix("B").replace("_", "")
    number, unit = cleaned, ""
    if cleaned and cleaned[-1] in units:
        number, unit = cleaned[:-1], cleaned[-1]
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise ValueError(f"not a size (like 500M or 2G): {text!r}") from None
    # float() also reads "inf" and "nan", which int() cannot take.
    if not math.isfinite(value):
        raise ValueError(f"not a size (like 500M or 2G): {text!r}")
    if value < 0:
        raise ValueError(f"a size cannot be negative: {text!r}")
    return int(value)


def format_size(size: int) -> str:
    for unit in ("T", "G", "M", "K"):
        step = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[unit]
        if size >= step and size % step == 0:
            return f"{size // step}{unit}"
    return str(size)
