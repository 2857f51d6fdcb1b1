"""Queue ids.

A queue id names one accepted message for its whole life: it is in the
250 reply, the Received header, every log line and every CLI command.
It is 15 characters of Crockford base32 (no I, L, O, U), so it is easy
to read aloud and to grep, and sorts by arrival. Its 75 bits are:

* 52 bits of arrival time in microseconds (good until the year 2112);
* 13 bits drawn at random once per process (and again in every forked
  worker), so that workers and nodes making ids in the same microsecond
  almost never share this part (1 in 8192 per pair of processes);
* 10 bits of a per-process counter, so one process never repeats an id
  unless it makes more than 1024 in one microsecond, which it cannot.
"""

from __future__ import annotations

import itertools
import os
import secrets
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_TAG_BITS = 13
_COUNTER_BITS = 10
_LENGTH = 15

_tag = 0
_counter = itertools.count()


def _reseed() -> None:
    global _tag, _counter
    _tag = secrets.randbits(_TAG_BITS)
    _counter = itertools.count(secrets.randbits(_COUNTER_BITS))


_reseed()
os.register_at_fork(after_in_child=_reseed)


def new_queue_id() -> str:
    """Return a fresh queue id such as ``0SGVW3MDVVM74CQ``."""
    micros = time.time_ns() // 1000
    value = (
        (micros << (_TAG_BITS + _COUNTER_BITS))
        | (_tag << _COUNTER_BITS)
        | (next(_counter) & ((1 << _COUNTER_BITS) - 1))
    )
    chars = []
    for _ in range(_LENGTH):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def is_queue_id(text: str) -> bool:
    """True when *text* has the shape of a queue id (not that it exists)."""
    return len(text) == _LENGTH and all(c in _ALPHABET for c in text)
