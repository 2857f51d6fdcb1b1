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

import base64
import itertools
import os
import secrets
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_TO_CROCKFORD = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _ALPHABET.encode("ascii")
)
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
    # 75 bits, shifted to 80, are 16 base32 digits of which the last is
    # padding; b32encode does the digit work in C, translate maps RFC 4648
    # digits to Crockford's.
    digits = base64.b32encode((value << 5).to_bytes(10, "big"))
    return digits[:_LENGTH].translate(_TO_CROCKFORD).decode("ascii")


def is_queue_id(text: str) -> bool:
    """True when *text* has the shape of a queue id (not that it exists)."""
    return len(text) == _LENGTH and all(c in _ALPHABET for c in text)
