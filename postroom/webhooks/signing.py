"""Signatures of webhook posts, and how a receiver checks them.

Each post carries two headers::

    X-Postroom-Timestamp: 1800000000
    X-Postroom-Signature: v1=<hex HMAC-SHA256>

The HMAC's key is the endpoint's secret (shown when the endpoint is
made, ``postroom webhook list --secrets``), its message the timestamp's
decimal digits, a ".", then the exact body bytes. A receiver:

1. reads the raw body before any JSON parsing (re-encoding JSON changes
   bytes, and the signature with them);
2. computes ``hmac_sha256(secret, timestamp + "." + body)`` and compares
   it with the header's hex digest in constant time;
3. refuses a timestamp older than a few minutes (``TOLERANCE``), which
   stops a captured post from being replayed later. Our own retries are
   signed afresh, so they pass.

SendGrid signs with ECDSA instead, whose verification needs its public
key; an HMAC needs only the shared secret and the standard library on
the receiving side. ``v1=`` names the scheme so that another can join
without breaking receivers (several ``v1=`` values may be given, comma
separated, while a secret is being rotated; ``verify`` accepts any).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

TIMESTAMP_HEADER = "X-Postroom-Timestamp"
SIGNATURE_HEADER = "X-Postroom-Signature"
# Seconds a signed post stays acceptable.
TOLERANCE = 300


def new_secret() -> str:
    """A fresh endpoint secret: 256 random bits, hex."""
    return secrets.token_hex(32)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Postroom-Signature`` value for *body* sent at *timestamp*."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"v1={mac.hexdigest()}"


def verify(
    secret: str,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    now: float | None = None,
    tolerance: float = TOLERANCE,
) -> bool:
    """Whether *signature* (the header's value) signs *body* at
    *timestamp* (the other header's value) with *secret*, and the
    timestamp is within *tolerance* seconds of *now*."""
    if not (timestamp.isascii() and timestamp.isdigit()):
        return False
    when = int(timestamp)
    current = time.time() if now is None else now
    if abs(current - when) > tolerance:
        return False
    wanted = sign(secret, when, body)
    return any(
        hmac.compare_digest(wanted, part.strip()) for part in signature.split(",")
    )
