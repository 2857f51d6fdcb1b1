"""BODY and BODYSTRUCTURE (RFC 3501 §7.4.2) from a ``mime.Part`` tree.

A leaf part is (type subtype (params) id description encoding size),
then the line count for text/*, then for message/rfc822 the envelope,
the body structure and the line count of the encapsulated message.
BODYSTRUCTURE adds extension data: MD5, disposition, language and
location for a leaf; parameters, disposition, language and location
for a multipart. BODY is the same without any extension data.

Types, subtypes and parameter names go out lower-cased as ``mime``
parsed them (clients compare them case-insensitively),
parameter values and the transfer encoding as written. Defaults: a part
without Content-Type is text/plain; charset=us-ascii (message/rfc822
inside multipart/digest), and the encoding defaults to 7bit.

Line counts: the number of LF octets in the body, plus one for a last
line without a line end.
"""

from __future__ import annotations

from postroom.protocol.imap import envelope, responses
from postroom.protocol.imap.mime import Part, parse_disposition

NIL = responses.NIL


def render(part: Part, *, extended: bool, utf8: bool = False) -> bytes:
    """BODYSTRUCTURE (``extended``) or BODY of *part*."""
    s = responses.string
    if part.is_multipart:
        out = b"".join(render(c, extended=extended, utf8=utf8) for c in part.children)
        out += b" " + s(part.subtype.encode())
        if extended:
            out += b" " + _params(part.params)
            out += b" " + _extension_tail(part, utf8)
        return b"(" + out + b")"

    n = responses.nstring
    encoding = part.header("content-transfer-encoding") or b"7bit"
    fields = [
        s(part.maintype.encode()),
        s(part.subtype.encode()),
        _params(part.params),
        n(part.header("content-id"), utf8=utf8),
        n(part.header("content-description"), utf8=utf8),
        s(encoding),
        b"%d" % part.body_size,
    ]
    if part.message is not None:
        fields.append(envelope.render_envelope(part.message, utf8=utf8))
        fields.append(render(part.message, extended=extended, utf8=utf8))
        fields.append(b"%d" % count_lines(part))
    elif part.maintype == "text":
        fields.append(b"%d" % count_lines(part))
    if extended:
        fields.append(n(part.header("content-md5")))
        fields.append(_extension_tail(part, utf8))
    return b"(" + b" ".join(fields) + b")"


def count_lines(part: Part) -> int:
    data, start, end = part.data, part.body_start, part.end
    lines = data.count(b"\n", start, end)
    if end > start and data[end - 1] != 0x0A:
        lines += 1
    return lines


def _params(params: list[tuple[str, bytes]]) -> bytes:
    if not params:
        return NIL
    s = responses.string
    return b"(" + b" ".join(s(k.encode()) + b" " + s(v) for k, v in params) + b")"


def _extension_tail(part: Part, utf8: bool) -> bytes:
    """body-fld-dsp SP body-fld-lang SP body-fld-loc."""
    n = responses.nstring
    raw = part.header("content-disposition")
    if raw:
        kind, params = parse_disposition(raw)
        dsp = b"(" + responses.string(kind.encode()) + b" " + _params(params) + b")"
    else:
        dsp = NIL
    lang_raw = part.header("content-language")
    if lang_raw:
        tags = [t.strip() for t in lang_raw.split(b",") if t.strip()]
        if len(tags) == 1:
            lang = responses.string(tags[0])
        else:
            lang = b"(" + b" ".join(responses.string(t) for t in tags) + b")"
    else:
        lang = NIL
    return b" ".join((dsp, lang, n(part.header("content-location"), utf8=utf8)))
