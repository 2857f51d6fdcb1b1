"""A byte-offset MIME splitter: where each part's header and body are.

IMAP addresses parts of a stored message by octet ranges: BODY[1.2]
must be exactly the octets between two boundaries, BODY[1.MIME] exactly
the part's header block, and the sizes and line counts in BODYSTRUCTURE
must agree with them. The ``email`` package parses into objects that do
not keep offsets and re-serializes differently from the input (it re-
folds headers and normalizes line ends), so we find the offsets
ourselves. The grammar needed is small: a header block ends at the
first empty line (RFC 5322 §2.1); multipart bodies are cut at
"CRLF--boundary" lines (RFC 2046 §5.1.1, where the CRLF before a
delimiter belongs to the delimiter, not to the part); message/rfc822
bodies are messages again (RFC 2046 §5.2.1).

Nothing is copied: a ``Part`` holds offsets into the one ``bytes`` of
the message, and its header fields are parsed only when asked. The
message is expected with CRLF line ends, as the store keeps it.

``parse`` walks the whole tree, so FETCH calls it only for items that
need structure (ENVELOPE, BODYSTRUCTURE, numbered sections, header
fields); BODY[], RFC822 and RFC822.SIZE never do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_DEPTH = 32  # nesting beyond this is treated as an opaque leaf
_UNFOLD = re.compile(rb"\r?\n(?=[ \t])")


@dataclass(eq=False, slots=True)
class Part:
    """One entity: a header block at ``start``, a body from ``body_start``
    to ``end``. ``children`` for multipart, ``message`` for an
    encapsulated message (message/rfc822, message/global)."""

    data: bytes
    start: int
    body_start: int
    end: int
    maintype: str = "text"
    subtype: str = "plain"
    params: list[tuple[str, bytes]] = field(default_factory=list)
    children: list[Part] = field(default_factory=list)
    message: Part | None = None
    _fields: list[tuple[str, int, int]] | None = None

    @property
    def header_bytes(self) -> bytes:
        return self.data[self.start : self.body_start]

    @property
    def body(self) -> bytes:
        return self.data[self.body_start : self.end]

    @property
    def body_size(self) -> int:
        return self.end - self.body_start

    @property
    def is_multipart(self) -> bool:
        return self.maintype == "multipart"

    def fields(self) -> list[tuple[str, int, int]]:
        """Header fields as (lower-case name, start, end) with ``end``
        after the field's CRLF, folding included, in order."""
        if self._fields is None:
            self._fields = _split_fields(self.data, self.start, self.body_start)
        return self._fields

    def raw_field(self, start: int, end: int) -> bytes:
        return self.data[start:end]

    def header(self, name: str) -> bytes | None:
        """The first *name* field's value, unfolded and stripped."""
        for fname, start, end in self.fields():
            if fname == name:
                return field_value(self.data[start:end])
        return None

    def headers(self, name: str) -> list[bytes]:
        data = self.data
        return [field_value(data[s:e]) for n, s, e in self.fields() if n == name]

    def param(self, name: str) -> bytes | None:
        for key, value in self.params:
            if key == name:
                return value
        return None


def field_value(raw: bytes) -> bytes:
    """The value of one raw field ("Name: value CRLF"), unfolded."""
    value = raw.partition(b":")[2]
    return _UNFOLD.sub(b"", value).strip(b" \t\r\n")


def parse(data: bytes) -> Part:
    """The MIME tree of a whole message."""
    return _entity(data, 0, len(data), ("text", "plain"), 0)


def header_end(data: bytes) -> int:
    """Where the body of a whole message starts (after the blank line)."""
    return _header_end(data, 0, len(data))[1]


def _header_end(data: bytes, start: int, end: int) -> tuple[int, int]:
    """(end of header block incl. blank line, body start)."""
    if data.startswith(b"\r\n", start):
        return start, start + 2  # No header fields at all.
    if data.startswith(b"\n", start):
        return start, start + 1
    i = data.find(b"\r\n\r\n", start, end)
    if i >= 0:
        return i + 4, i + 4
    # Tolerate LF-only input rather than call the whole thing a header.
    i = data.find(b"\n\n", start, end)
    if i >= 0:
        return i + 2, i + 2
    return end, end


def _split_fields(data: bytes, start: int, stop: int) -> list[tuple[str, int, int]]:
    out: list[tuple[str, int, int]] = []
    pos = start
    while pos < stop:
        nl = data.find(b"\n", pos, stop)
        line_end = stop if nl < 0 else nl + 1
        c = data[pos]
        if c in (0x20, 0x09) and out:
            name, s, _ = out[-1]
            out[-1] = (name, s, line_end)  # A continuation line.
        elif line_end - pos > 2 or data[pos] not in (0x0D, 0x0A):
            colon = data.find(b":", pos, line_end)
            if colon > pos:
                name = data[pos:colon].strip(b" \t").decode("latin-1").lower()
                out.append((name, pos, line_end))
        pos = line_end
    return out


def _entity(
    data: bytes, start: int, end: int, default: tuple[str, str], depth: int
) -> Part:
    _, body_start = _header_end(data, start, end)
    part = Part(data, start, body_start, end)
    ctype = part.header("content-type")
    maintype, subtype, params = parse_content_type(ctype) if ctype else ("", "", [])
    if not maintype or not subtype:
        maintype, subtype = default
    if maintype == "text" and not any(k == "charset" for k, _ in params):
        # RFC 2045 §5.2: text without a charset is US-ASCII; saying so
        # spares every client the rule.
        params = [*params, ("charset", b"us-ascii")]
    part.maintype, part.subtype, part.params = maintype, subtype, params
    if depth >= MAX_DEPTH:
        return part
    if maintype == "multipart":
        boundary = part.param("boundary")
        if boundary:
            inner = ("message", "rfc822") if subtype == "digest" else ("text", "plain")
            part.children = [
                _entity(data, s, e, inner, depth + 1)
                for s, e in _split_multipart(data, body_start, end, boundary)
            ]
        if not part.children:
            # RFC 3501 wants at least one part; an empty text part stands
            # in for a multipart without usable boundaries.
            part.children = [Part(data, body_start, body_start, body_start)]
    elif maintype == "message" and subtype in ("rfc822", "global"):
        part.message = _entity(data, body_start, end, ("text", "plain"), depth + 1)
    return part


def _split_multipart(
    data: bytes, start: int, end: int, boundary: bytes
) -> list[tuple[int, int]]:
    delim = b"\r\n--" + boundary
    # A delimiter right at the body start uses the header's last CRLF.
    pos = start - 2 if data[start - 2 : start] == b"\r\n" else start
    spans: list[tuple[int, int]] = []
    part_start = -1
    while True:
        i = data.find(delim, pos, end)
        if i < 0:
            break
        j = i + len(delim)
        close = data.startswith(b"--", j)
        k = j + 2 if close else j
        eol = data.find(b"\r\n", k, end)
        line_end = end if eol < 0 else eol + 2
        if data[k:line_end].strip(b" \t\r\n"):
            pos = i + 2  # "--boundaryX": a longer string, not ours.
            continue
        if part_start >= 0:
            spans.append((part_start, i))
        if close:
            return spans
        part_start = line_end
        pos = line_end - 2 if eol >= 0 else end
    if part_start >= 0:
        spans.append((part_start, end))  # No close delimiter: to the end.
    return spans


def parse_content_type(value: bytes) -> tuple[str, str, list[tuple[str, bytes]]]:
    """("text", "plain", [("charset", b"utf-8")]) from a Content-Type
    value; names lower-cased, values as written (quotes removed)."""
    head, params = _split_params(value)
    maintype, _, subtype = head.partition(b"/")
    return (
        maintype.strip().decode("latin-1").lower(),
        subtype.strip().decode("latin-1").lower(),
        params,
    )


def parse_disposition(value: bytes) -> tuple[str, list[tuple[str, bytes]]]:
    head, params = _split_params(value)
    return head.strip().decode("latin-1").lower(), params


def _split_params(value: bytes) -> tuple[bytes, list[tuple[str, bytes]]]:
    # Split at ";" outside quoted strings; a parameter is name=value or
    # name="quoted value". RFC 2231 continuations are passed through as
    # separate parameters, which is what IMAP servers commonly do.
    # XXX: RFC 822 comments inside the value ("text/plain (note)") are not
    # removed because real mail hardly ever has them; such a value would
    # show its comment in BODYSTRUCTURE.
    pieces: list[bytes] = []
    current = bytearray()
    quoted = escaped = False
    for c in value:
        if escaped:
            current.append(c)
            escaped = False
        elif quoted and c == 0x5C:
            escaped = True
        elif c == 0x22:
            quoted = not quoted
            current.append(c)
        elif c == 0x3B and not quoted:
            pieces.append(bytes(current))
            current.clear()
        else:
            current.append(c)
    pieces.append(bytes(current))
    params: list[tuple[str, bytes]] = []
    for piece in pieces[1:]:
        name, eq, val = piece.partition(b"=")
        name = name.strip()
        if not eq or not name:
            continue
        val = val.strip()
        if len(val) >= 2 and val.startswith(b'"') and val.endswith(b'"'):
            val = val[1:-1]
        params.append((name.decode("latin-1").lower(), val))
    return pieces[0], params
