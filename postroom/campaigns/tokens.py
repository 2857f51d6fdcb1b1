"""Signed, expiring tokens for links in mail (confirmation now; open,
click and unsubscribe links can use the same).

A token is ``<payload>.<mac>``, both URL-safe base64 without padding:

    payload = purpose ":" subject ":" expiry (epoch seconds)
    mac     = HMAC-SHA256(node secret, payload), first 16 bytes

The purpose is inside the MAC, so a token made for one kind of link is
refused by every other kind. 128 bits of MAC is far beyond guessing
over HTTP. Nothing is stored per token: the link carries everything,
and a node can check tokens it made before a restart.

The node secret (``<data_dir>/link.key``, 32 random bytes, mode 0600)
is made on first use: written under a private name, then linked into
place, which fails if the name exists. That is safe when two processes
(two workers, or a worker and the CLI) race: the loser reads the
winner's file, never a half-written one. Deleting the file
invalidates every link ever sent; nodes of one cluster must share it.

``verify`` raises ``BadToken`` (altered, malformed, other purpose) or
``ExpiredToken``; callers answer 404 for the first (nothing to tell a
tamperer) and 400 with an explanation for the second.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from postroom.errors import PostroomError

SECRET_NAME = "link.key"
_SECRET_BYTES = 32
_MAC_BYTES = 16


class BadToken(PostroomError):
    """The token was not made by this node for this purpose."""


class ExpiredToken(BadToken):
    """The token is genuine but its time has passed."""


def node_secret(data_dir: str | os.PathLike[str]) -> bytes:
    """This node's link secret, made on first use."""
    path = Path(data_dir) / SECRET_NAME
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(_SECRET_BYTES)
    # Written whole under a private name, then linked into place:
    # link() fails if the name exists, so the first process wins and no
    # one ever reads a half-written secret.
    temporary = path.with_name(f".{SECRET_NAME}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secret)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return _read(path)  # another process won the race
    finally:
        temporary.unlink(missing_ok=True)
    return secret


def _read(path: Path) -> bytes:
    secret = path.read_bytes()
    if len(secret) != _SECRET_BYTES:
        # Someone else's file: we never link a short one into place.
        raise PostroomError(f"{path}: not a link secret; delete it to make a new one")
    return secret


def sign(secret: bytes, purpose: str, subject: str, expires: int) -> str:
    """A token for *subject* (an id without ':'), good until *expires*."""
    payload = f"{purpose}:{subject}:{expires}".encode()
    return f"{_b64(payload)}.{_b64(_mac(secret, payload))}"


def verify(secret: bytes, purpose: str, token: str, now: float) -> str:
    """The subject of *token*; BadToken or ExpiredToken."""
    encoded, dot, mac = token.partition(".")
    if not dot or len(token) > 512:
        raise BadToken("malformed token")
    try:
        payload = _unb64(encoded)
        given = _unb64(mac)
    except (binascii.Error, ValueError):
        raise BadToken("malformed token") from None
    # The MAC first, in constant time: nothing else is looked at in
    # a payload we did not sign.
    if not hmac.compare_digest(given, _mac(secret, payload)):
        raise BadToken("bad signature")
    try:
        kind, subject, expires = payload.decode().split(":")
        deadline = int(expires)
    except ValueError:
        raise BadToken("malformed payload") from None
    if kind != purpose:
        raise BadToken("token made for another purpose")
    if now > deadline:
        raise ExpiredToken("the link has expired")
    return subject


def _mac(secret: bytes, payload: bytes) -> bytes:
    return hmac.new(secret, payload, hashlib.sha256).digest()[:_MAC_BYTES]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    if not text.isascii():
        raise ValueError("not ASCII")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
