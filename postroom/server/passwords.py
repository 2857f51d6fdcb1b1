"""Password hashing with scrypt, stored as a PHC-style string.

A stored hash looks like::

    $scrypt$ln=14,r=8,p=1$<salt>$<hash>

``ln`` is log2 of scrypt's cost N, ``r`` the block size and ``p`` the
parallelism (RFC 7914 §2); salt and hash are standard base64 without
padding, as the PHC string format specifies. The parameters travel with
each hash, so raising them later needs no migration: old hashes still
verify, ``needs_rehash`` says they are out of date, and the caller stores
a fresh hash the next time the user logs in with the right password.

Why stdlib scrypt and not argon2-cffi: scrypt is memory-hard too, which
is what makes GPU and ASIC guessing expensive; ``hashlib.scrypt`` is
OpenSSL's implementation, already audited and already linked, and it
releases the GIL, so a thread pool runs hashes in parallel. Argon2id is
the newer recommendation (RFC 9106) with better resistance to
side-channel and time-memory trade-off attacks, but for a server that
hashes only on login it would buy little and cost a compiled dependency
on every platform we install on. The string format leaves room: a
``$argon2id$`` prefix can be added beside ``$scrypt$`` without touching
stored hashes.

Why ln=14, r=8, p=1 (N=16384, 16 MiB per hash): on the 2-core build
machine one hash took 60-62 ms at ln=14 and 155-165 ms at ln=15, and
our budget is about 100 ms per verification, because every SMTP AUTH,
POP3 USER/PASS and IMAP LOGIN pays it and a login storm must not queue
for seconds. ln=15 would double both time and memory. 16 MiB per hash
also bounds memory under load: the default thread pool runs at most
``min(32, cpus + 4)`` hashes at once.

Passwords are normalised to Unicode NFC before hashing, as the PRECIS
OpaqueString profile does (RFC 8265 §4.2), so "é" typed as one code
point or as e + combining accent is the same password.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import unicodedata
from dataclasses import dataclass

# Current parameters for new hashes; see the module docstring for the
# measurement behind them.
LOG2_N = 14
BLOCK_SIZE = 8
PARALLELISM = 1

_SALT_BYTES = 16
_HASH_BYTES = 32

# Refuse to verify against parameters beyond these, so that a tampered or
# corrupt row cannot make one login allocate gigabytes.
_MAX_LOG2_N = 20
_MAX_R = 32
_MAX_P = 16

_FORMAT = re.compile(
    r"\$scrypt\$ln=(?P<ln>\d{1,2}),r=(?P<r>\d{1,2}),p=(?P<p>\d{1,2})"
    r"\$(?P<salt>[A-Za-z0-9+/]+)\$(?P<hash>[A-Za-z0-9+/]+)"
)


@dataclass(frozen=True)
class _Parsed:
    log2_n: int
    r: int
    p: int
    salt: bytes
    digest: bytes


def hash_password(password: str) -> str:
    """Hash *password* with a fresh random salt and the current parameters.

    Returns the PHC-style string to store. Any string is accepted, the
    empty one included: password policy belongs to the caller.
    """
    salt = os.urandom(_SALT_BYTES)
    digest = _scrypt(password, salt, LOG2_N, BLOCK_SIZE, PARALLELISM, _HASH_BYTES)
    return (
        f"$scrypt$ln={LOG2_N},r={BLOCK_SIZE},p={PARALLELISM}"
        f"${_b64encode(salt)}${_b64encode(digest)}"
    )


def verify_password(password: str, stored: str) -> bool:
    """True when *password* matches the *stored* hash string.

    The comparison is constant-time in the digest. Raises ValueError
    when *stored* is not a hash this module can read (wrong scheme,
    corrupt, or parameters beyond the sanity limits): that is a fault in
    our data, not a wrong password, and the caller should say so.
    """
    parsed = _parse(stored)
    digest = _scrypt(
        password, parsed.salt, parsed.log2_n, parsed.r, parsed.p, len(parsed.digest)
    )
    return hmac.compare_digest(digest, parsed.digest)


def needs_rehash(stored: str) -> bool:
    """True when *stored* was not made with the current parameters.

    Unreadable strings need a rehash too. Weaker and stronger parameters
    alike count as out of date: the current ones are the chosen balance.
    """
    try:
        parsed = _parse(stored)
    except ValueError:
        return True
    return (
        (parsed.log2_n, parsed.r, parsed.p) != (LOG2_N, BLOCK_SIZE, PARALLELISM)
        or len(parsed.salt) != _SALT_BYTES
        or len(parsed.digest) != _HASH_BYTES
    )


def _parse(stored: str) -> _Parsed:
    match = _FORMAT.fullmatch(stored)
    if match is None:
        raise ValueError("not a $scrypt$ password hash")
    log2_n, r, p = int(match["ln"]), int(match["r"]), int(match["p"])
    if not (1 <= log2_n <= _MAX_LOG2_N and 1 <= r <= _MAX_R and 1 <= p <= _MAX_P):
        raise ValueError("scrypt parameters out of range")
    salt = _b64decode(match["salt"])
    digest = _b64decode(match["hash"])
    if len(salt) < 8 or len(digest) < 16:
        raise ValueError("scrypt salt or hash too short")
    return _Parsed(log2_n, r, p, salt, digest)


def _scrypt(
    password: str, salt: bytes, log2_n: int, r: int, p: int, length: int
) -> bytes:
    secret = unicodedata.normalize("NFC", password).encode("utf-8")
    n = 1 << log2_n
    # OpenSSL refuses to use more than maxmem bytes, and its default (32
    # MiB) is just short of ln=15's needs; allow what these parameters
    # need, 128*r*(N+p) bytes per RFC 7914 §5, plus headroom.
    maxmem = 128 * r * (n + p + 2) + (1 << 20)
    return hashlib.scrypt(secret, salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=length)


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii").rstrip("=")


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except ValueError:
        raise ValueError("bad base64 in password hash") from None
