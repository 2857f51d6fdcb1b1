"""BODY[section]<partial> (RFC 3501 §6.4.5): which octets a section is.

Part numbers walk the tree: in a multipart, n is the n-th child; a part
that is not multipart has only part 1, its own body; and the numbers
after a message/rfc822 part address the encapsulated message's parts.
HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT and TEXT apply to a message:
the whole message for an empty part path, else a message/rfc822 part.
MIME is the header block of the part it follows.

A section that does not exist (part 7 of a two-part message, TEXT of an
image) is returned as None and rendered as NIL: RFC 3501 does not say
what to do, and an error would fail the whole FETCH for the sake of one
part.

Results are ``memoryview`` slices of the stored message wherever the
octets are contiguous in it, so a big body is never copied before it
is written.
"""

from __future__ import annotations

import binascii

from postroom.protocol.imap.fetchitems import Section
from postroom.protocol.imap.mime import Part

Octets = bytes | memoryview


def find_part(root: Part, path: tuple[int, ...]) -> Part | None:
    """The part that *path* names (the root for an empty path)."""
    part = root
    for depth, n in enumerate(path):
        message = depth == 0
        if depth and part.message is not None:
            part = part.message  # Into an encapsulated message.
            message = True
        if part.is_multipart:
            if n > len(part.children):
                return None
            part = part.children[n - 1]
        elif n != 1 or not message:
            # Only a message has a part 1 that is its own body; a leaf
            # part inside a multipart has no sub-parts.
            return None
    return part


def extract(root: Part, section: Section) -> Octets | None:
    """The octets of *section* (before any partial), or None."""
    part = find_part(root, section.part)
    if part is None:
        return None
    view = memoryview(root.data)
    spec = section.spec
    if not spec:
        if not section.part:
            return view  # BODY[]: the whole message.
        return view[part.body_start : part.end]
    if spec == "MIME":
        return view[part.start : part.body_start]
    message = part if not section.part else part.message
    if message is None:
        return None
    if spec == "TEXT":
        return view[message.body_start : message.end]
    if spec == "HEADER":
        return view[message.start : message.body_start]
    return header_fields(message, section.fields, spec == "HEADER.FIELDS.NOT")


class UnknownCte(Exception):
    """BINARY of a part whose transfer encoding we cannot undo; the
    FETCH fails with NO [UNKNOWN-CTE] (RFC 3516 §4.3)."""


def decoded(root: Part, section: Section) -> Octets | None:
    """BINARY[part]: the part's content with base64 or quoted-printable
    undone (RFC 3516 §4.2); identity encodings come back uncopied. An
    empty path is the whole message, which has no single encoding."""
    if not section.part:
        return memoryview(root.data)
    part = find_part(root, section.part)
    if part is None:
        return None
    if part.is_multipart:
        raise UnknownCte("a multipart has no transfer encoding to undo")
    cte = (part.header("content-transfer-encoding") or b"7bit").strip().lower()
    body = memoryview(root.data)[part.body_start : part.end]
    if cte in (b"7bit", b"8bit", b"binary"):
        return body
    try:
        if cte == b"base64":
            return binascii.a2b_base64(body)
        if cte == b"quoted-printable":
            return binascii.a2b_qp(body)
    except binascii.Error:
        raise UnknownCte("the part's encoding is broken") from None
    raise UnknownCte(f"unknown transfer encoding {cte[:20]!r}")


def header_fields(message: Part, names: tuple[str, ...], exclude: bool) -> bytes:
    """The fields named (or, with *exclude*, all others) in order, then
    the blank line that ends a header (RFC 3501 §6.4.5)."""
    wanted = {n.lower() for n in names}
    out = [
        message.data[s:e]
        for name, s, e in message.fields()
        if (name in wanted) != exclude
    ]
    out.append(b"\r\n")
    return b"".join(out)


def partial(octets: Octets, origin: int, count: int) -> Octets:
    """<origin.count>: past the end is an empty string (RFC 3501)."""
    return octets[origin : origin + count]
