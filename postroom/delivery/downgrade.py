"""8-bit to 7-bit: making a message fit a server without 8BITMIME.

RFC 6152 §3 leaves a client holding 8-bit content two choices when the
server does not announce 8BITMIME: convert the content to 7 bits, or
return it as undeliverable. ``to_7bit`` does the first where MIME makes
it possible and says None where it does not, so that the caller bounces.

Theory of operation
-------------------

The message is walked as a tree of MIME entities, each one a header
section, an empty line and a body:

- a leaf whose body is not clean (8-bit octets, NUL, a line longer than
  998 octets) is re-encoded: ``text/*`` as quoted-printable, anything
  else as base64 (RFC 2045 §6), and its Content-Transfer-Encoding field
  is replaced;
- ``multipart/*`` is split at its delimiter lines and each part walked;
- ``message/rfc822`` may only be labelled 7bit, 8bit or binary (RFC 2046
  §5.2.1), so it cannot be encoded itself: the inner message is walked;
- ``message/global`` and its relatives (RFC 6532 §3.5, RFC 6533) may be
  encoded and are treated as text; other ``message/*`` types must be
  7bit already (RFC 2046 §5.2.2-3, RFC 3464) and make the conversion
  fail if they are not.

Conversion is impossible, and the result None, when 8-bit octets sit
where no transfer encoding can reach: in a header section (raw UTF-8
headers need SMTPUTF8, RFC 6532), in a multipart preamble or epilogue,
in a multipart without a usable boundary. Content with bare CR or LF is
BINARYMIME (RFC 3030) that has no line structure to walk: None too.

Bytes that need no change stay byte-identical. That is why the walk
works on the bytes and only asks the stdlib ``email`` package to read
header fields and to encode bodies: re-generating the message with
``email.generator.BytesGenerator`` changes more than it must. Measured
with Python 3.11, even ``policy.SMTP`` with ``refold_source="none"``
drops the spaces after a field's colon (``To:   x`` becomes ``To: x``)
and the transport padding after a boundary, and ``compat32`` refolds
long headers too; either would break DKIM signatures over parts we
never needed to touch.

Pure: bytes in, bytes out; no I/O.
"""

from __future__ import annotations

import binascii
import email.parser
import email.policy
import quopri
from email import base64mime, quoprimime
from email.message import Message

MAX_LINE = 998  # RFC 5321 §4.5.3.1.6 and RFC 5322 §2.1.1, without CRLF
MAX_DEPTH = 32  # nesting beyond this is an attack, not a message
ENCODED_LINE = 76  # RFC 2045 §6.7-6.8

CRLF = b"\r\n"
_IDENTITY = frozenset({"", "7bit", "8bit", "binary"})
_HEADERS = email.parser.BytesHeaderParser(policy=email.policy.compat32)


class _Impossible(Exception):
    """8-bit data where no transfer encoding may go."""


def to_7bit(content: bytes) -> bytes | None:
    """*content* made 7-bit clean, or None when that is impossible.

    *content* is a whole message, header and body, with CRLF line
    endings as the spool stores it. The result has no octet above 127,
    no NUL and no body line longer than 998 octets; header sections are
    never changed except for the fields of a part that had to be
    re-encoded. Returns *content* itself (the same object) when nothing
    needed changing, so ``result is content`` tells the caller.

    None means: 8-bit octets in a header section, a preamble, an
    epilogue or a ``message/*`` part that may not be encoded; a
    multipart with 8-bit content and no boundary; bare CR or LF
    (BINARYMIME content); nesting deeper than ``MAX_DEPTH``.
    """
    if _has_bare_newline(content):
        return None
    if _clean(content):
        return content
    try:
        return _entity(content, "text/plain", 0, message=True)
    except _Impossible:
        return None


# -- the walk ---------------------------------------------------------


def _entity(data: bytes, default_type: str, depth: int, *, message: bool) -> bytes:
    """One MIME entity, converted; *data* itself when untouched.

    *message* says the entity is a whole message (the top, or inside
    message/rfc822) rather than a body part.
    """
    if depth > MAX_DEPTH:
        raise _Impossible("nested too deep")
    header, body = _split(data)
    if not header.isascii():
        raise _Impossible("8-bit header")
    if body is None or _clean(body):
        return data

    fields = _HEADERS.parsebytes(header + CRLF)
    fields.set_default_type(default_type)
    ctype = fields.get_content_type()
    cte = _transfer_encoding(fields)

    # Containers: walk what they hold, then relabel them (their own
    # encoding may only be an identity one, RFC 2045 §6.4).
    if ctype.startswith("multipart/") or ctype == "message/rfc822":
        if cte not in _IDENTITY:
            raise _Impossible("encoded container")
        if ctype == "message/rfc822":
            new_body = _entity(body, "text/plain", depth + 1, message=True)
        else:
            new_body = _multipart(body, fields, depth)
        if new_body is body:
            return data
        if cte in ("8bit", "binary"):
            header = _set_field(header, b"Content-Transfer-Encoding", b"7bit")
        return header + CRLF + new_body

    if ctype.startswith("message/") and not ctype.startswith("message/global"):
        raise _Impossible(f"8-bit {ctype}")
    return _leaf(header, body, fields, ctype, cte, message=message)


def _multipart(body: bytes, fields: Message, depth: int) -> bytes:
    boundary = fields.get_boundary()
    if not boundary or not boundary.isascii():
        raise _Impossible("multipart without boundary")
    delimiter = b"--" + boundary.encode("ascii")
    child_type = (
        "message/rfc822"
        if fields.get_content_type() == "multipart/digest"
        else "text/plain"
    )

    # Cut the lines into preamble, parts and epilogue. Joining the
    # pieces with CRLF again gives back the body exactly, so a part that
    # needs no change costs nothing. The CRLF before a delimiter belongs
    # to the delimiter (RFC 2046 §5.1.1), hence not to the part.
    def walk(part: list[bytes]) -> bytes:
        return _entity(CRLF.join(part), child_type, depth + 1, message=False)

    lines = body.split(CRLF)
    out: list[bytes] = []
    part: list[bytes] | None = None  # None while in preamble or epilogue
    closed = False
    for line in lines:
        kind = None if closed else _delimiter_kind(line, delimiter)
        if kind is None:
            if part is None:
                _require_7bit(line, "8-bit preamble or epilogue")
                out.append(line)
            else:
                part.append(line)
            continue
        if part:
            out.append(walk(part))
        out.append(line)
        part = [] if kind == "part" else None
        closed = kind == "close"
    if part:  # no close delimiter: the last part runs to the end
        out.append(walk(part))
    return CRLF.join(out)


def _delimiter_kind(line: bytes, delimiter: bytes) -> str | None:
    # RFC 2046 §5.1.1: the delimiter, "--" for the last one, then only
    # transport padding (linear white space) up to the CRLF.
    if not line.startswith(delimiter):
        return None
    rest = line[len(delimiter) :]
    if rest.startswith(b"--") and not rest[2:].strip(b" \t"):
        return "close"
    if not rest.strip(b" \t"):
        return "part"
    return None


def _leaf(
    header: bytes,
    body: bytes,
    fields: Message,
    ctype: str,
    cte: str,
    *,
    message: bool,
) -> bytes:
    raw = _decode(body, cte)

    # Text stays readable as quoted-printable; the email package's
    # encoders take the body as one character per octet.
    if ctype.startswith(("text/", "message/global")):
        as_text = raw.decode("latin-1")
        encoded = quoprimime.body_encode(as_text, ENCODED_LINE, "\r\n")
        name = b"quoted-printable"
    else:
        encoded = base64mime.body_encode(raw, ENCODED_LINE, "\r\n")
        name = b"base64"
    new_body = encoded.encode("ascii")
    # Keep whether the body ended with a line break: inside a multipart
    # an extra one would add an empty line to the part.
    if new_body.endswith(CRLF) and not body.endswith(CRLF):
        new_body = new_body[:-2]
    elif body.endswith(CRLF) and not new_body.endswith(CRLF):
        new_body += CRLF

    header = _set_field(header, b"Content-Transfer-Encoding", name)
    if ctype == "text/plain" and fields.get_param("charset") is None:
        header = _add_charset(header, raw)
    if message and fields.get("MIME-Version") is None:
        # A message without MIME-Version is not MIME (RFC 2045 §4), and
        # the encoding we just declared would mean nothing to a reader.
        header = _set_field(header, b"MIME-Version", b"1.0")
    return header + CRLF + new_body


def _decode(body: bytes, cte: str) -> bytes:
    """The octets *body* stands for under *cte*.

    A quoted-printable or base64 body with 8-bit octets in it is broken
    but common; decoding and encoding it again is the repair, since
    both decoders pass such octets through or skip them as RFC 2045
    §6.7 and §6.8 advise.
    """
    if cte in _IDENTITY:
        return body
    if cte == "quoted-printable":
        return quopri.decodestring(body)
    if cte == "base64":
        try:
            return binascii.a2b_base64(body)
        except binascii.Error:
            raise _Impossible("broken base64") from None
    # x-uuencode and friends: we cannot re-encode what we cannot read.
    raise _Impossible(f"8-bit data in {cte}")


# -- header sections --------------------------------------------------


def _split(data: bytes) -> tuple[bytes, bytes | None]:
    """Header section (each field with its CRLF) and body; the body is
    None when there is no empty line. ``header + CRLF + body`` is
    *data* again."""
    if data.startswith(CRLF):
        return b"", data[2:]
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return data, None
    return data[: end + 2], data[end + 4 :]


def _fields(header: bytes) -> list[bytes]:
    """Split a header section into fields, folded lines kept with their
    field and every byte kept."""
    fields: list[bytes] = []
    for line in header.splitlines(keepends=True):
        if fields and line[:1] in (b" ", b"\t"):
            fields[-1] += line
        else:
            fields.append(line)
    return fields


def _field_name(field: bytes) -> bytes:
    return field.split(b":", 1)[0].strip().lower()


def _set_field(header: bytes, name: bytes, value: bytes) -> bytes:
    """*header* with field *name* set to *value*: the first such field
    replaced in place, any others dropped, appended when absent."""
    new = name + b": " + value + CRLF
    out: list[bytes] = []
    done = False
    for field in _fields(header):
        if _field_name(field) != name.lower():
            out.append(field)
        elif not done:
            out.append(new)
            done = True
    if not done:
        out.append(new)
    return b"".join(out)


def _add_charset(header: bytes, raw: bytes) -> bytes:
    """Name a charset for 8-bit text/plain that had none.

    Without one the reader must take the text as US-ASCII (RFC 2046
    §4.1.2), which is certainly wrong once it has 8-bit octets: say
    UTF-8 when it decodes as such, else UNKNOWN-8BIT, the name RFC 1428
    registered for exactly this conversion.
    """
    try:
        raw.decode("utf-8")
        charset = b"utf-8"
    except UnicodeDecodeError:
        charset = b"unknown-8bit"
    out: list[bytes] = []
    found = False
    for field in _fields(header):
        if not found and _field_name(field) == b"content-type":
            field = field.rstrip(b"\r\n") + b"; charset=" + charset + CRLF
            found = True
        out.append(field)
    if not found:
        out.append(b"Content-Type: text/plain; charset=" + charset + CRLF)
    return b"".join(out)


def _transfer_encoding(fields: Message) -> str:
    value = fields.get("Content-Transfer-Encoding")
    if value is None:
        return ""
    # The first token only: RFC 2045 allows a comment after it.
    token = str(value).split("(", 1)[0].strip().lower()
    return token


# -- cleanliness ------------------------------------------------------


def _clean(data: bytes) -> bool:
    """7-bit safe as it is: ASCII, no NUL, no overlong line."""
    if not data.isascii() or b"\0" in data:
        return False
    if len(data) <= MAX_LINE:
        return True
    return max(map(len, data.split(CRLF))) <= MAX_LINE


def _has_bare_newline(data: bytes) -> bool:
    crlf = data.count(CRLF)
    return data.count(b"\r") != crlf or data.count(b"\n") != crlf


def _require_7bit(line: bytes, why: str) -> None:
    if not line.isascii():
        raise _Impossible(why)
