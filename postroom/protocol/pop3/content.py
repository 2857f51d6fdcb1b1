"""Message content for multi-line POP3 answers: dot-stuffing, TOP's
cut, and the APOP digest (RFC 1939 §3, §7). Pure functions on bytes.

Content is taken as stored: CRLF line ends (the mailbox's contract),
except that ``crlf`` mends a file another program stored with LF ends.
"""

from __future__ import annotations

import hashlib
import hmac

_CRLF = b"\r\n"
# Octets TOP skips per count(); see top().
_TOP_BLOCK = 1 << 16


def crlf(content: bytes) -> bytes:
    """*content* with every line ending CRLF (RFC 1939 §3): Postroom
    stores CRLF, but mutt, procmail or a copy from another server may
    have put LF-only files in a Maildir. Two ``count`` passes (C speed)
    tell; a file already right comes back as it is, without a copy."""
    lf = content.count(b"\n")
    if lf == 0 or content.count(_CRLF) == lf:
        return content
    return _CRLF.join(line.removesuffix(b"\r") for line in content.split(b"\n"))


def stuff(content: bytes) -> bytes:
    """Dot-stuff *content* for a multi-line response (RFC 1939 §3).

    Also after a bare LF: stored mail should have none, but clients
    such as poplib split lines at LF alone, and a "." line after a bare
    LF would end the message early for them. ``bytes.replace`` returns
    its input unchanged, without a copy, when there is nothing to stuff.
    """
    stuffed = content.replace(b"\n.", b"\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed


def top(content: bytes, lines: int) -> bytes:
    """The header, the blank line after it, and the first *lines* lines
    of the body (RFC 1939 §7 TOP). A message without a blank line is
    all header and comes back whole."""
    if content.startswith(_CRLF):
        pos = 2
    else:
        blank = content.find(b"\r\n\r\n")
        if blank < 0:
            return content
        pos = blank + 4
    # The *lines*-th line end after pos. A line at a time in Python
    # would let "TOP 1 999999999" of a message of empty lines hold the
    # event loop for seconds, so whole blocks are skipped with count(),
    # which runs in C, and only the last block is walked line by line.
    remaining = lines
    while remaining:
        stop = min(pos + _TOP_BLOCK, len(content))
        found = content.count(b"\n", pos, stop)
        if found < remaining:
            if stop == len(content):
                return content
            remaining -= found
            pos = stop
            continue
        for _ in range(remaining):
            pos = content.index(b"\n", pos) + 1
        break
    return content[:pos]


def apop_digest(timestamp: str, secret: str) -> str:
    """The digest a client sends with APOP (RFC 1939 §7): MD5 of the
    greeting's timestamp followed by the shared secret, in hex."""
    return hashlib.md5((timestamp + secret).encode("utf-8")).hexdigest()


def apop_matches(timestamp: str, secret: str, digest: str) -> bool:
    """Whether *digest* is right for *secret*, compared in constant time."""
    return hmac.compare_digest(apop_digest(timestamp, secret), digest.lower())
