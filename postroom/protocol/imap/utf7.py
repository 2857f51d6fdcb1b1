"""Mailbox names in modified UTF-7 (RFC 3501 §5.1.3).

Printable US-ASCII stands for itself except "&", which is written "&-";
every other run of characters is UTF-16BE, base64-encoded with "," in
place of "/" and no padding, between "&" and "-". The encoding is
canonical: a decoder must refuse what an encoder would never produce
(a shifted run of printable ASCII, "&" followed by nothing, padding
bits left over, an empty shift other than "&-"), or two spellings would
name one mailbox and a name could slip past a check made on the other.
Those refusals raise ``ValueError``; the core answers them with NO or
BAD.

We wrote this rather than use the "utf-7" codec: that codec is plain
RFC 2152 UTF-7 (different alphabet, optional shifts) and accepts
non-canonical input.
"""

from __future__ import annotations

import base64
import binascii


def _printable(c: str) -> bool:
    return 0x20 <= ord(c) <= 0x7E


def encode(name: str) -> str:
    """The wire form of *name*."""
    if name.isascii() and "&" not in name and name.isprintable():
        return name  # The common case, and the fast path.
    out: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            raw = "".join(run).encode("utf-16-be")
            b64 = base64.b64encode(raw).decode("ascii").rstrip("=")
            out.append("&" + b64.replace("/", ",") + "-")
            run.clear()

    for c in name:
        if _printable(c):
            flush()
            out.append("&-" if c == "&" else c)
        else:
            run.append(c)
    flush()
    return "".join(out)


def decode(wire: str) -> str:
    """The name that *wire* spells; ``ValueError`` if it is not canonical
    modified UTF-7."""
    if "&" not in wire:
        if not all(_printable(c) for c in wire):
            raise ValueError("mailbox name has characters outside US-ASCII")
        return wire
    out: list[str] = []
    i, n = 0, len(wire)
    while i < n:
        c = wire[i]
        if not _printable(c):
            raise ValueError("mailbox name has characters outside US-ASCII")
        if c != "&":
            out.append(c)
            i += 1
            continue
        end = wire.find("-", i + 1)
        if end < 0:
            raise ValueError("unterminated shift in mailbox name")
        chunk = wire[i + 1 : end]
        i = end + 1
        if not chunk:
            out.append("&")
            continue
        out.append(_decode_run(chunk))
        if i < n and wire[i] == "&" and wire[i + 1 : i + 2] != "-":
            # Two adjacent shifted runs: an encoder makes one.
            raise ValueError("adjacent shifted runs in mailbox name")
    return "".join(out)


def _decode_run(chunk: str) -> str:
    b64 = chunk.replace(",", "/")
    if "/" in chunk or "=" in chunk:
        raise ValueError("bad base64 in mailbox name")
    try:
        raw = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("bad base64 in mailbox name") from None
    if len(raw) % 2 or base64.b64encode(raw).decode().rstrip("=") != b64:
        raise ValueError("non-canonical base64 in mailbox name")
    try:
        text = raw.decode("utf-16-be")
    except UnicodeDecodeError:
        raise ValueError("bad UTF-16 in mailbox name") from None
    if any(_printable(c) for c in text):
        raise ValueError("shifted printable ASCII in mailbox name")
    return text
