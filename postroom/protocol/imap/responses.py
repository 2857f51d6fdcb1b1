"""IMAP response syntax (RFC 3501 §7, §9): strings, lists, status lines.

A string goes out as a quoted string when it can (printable US-ASCII,
not too long) and as a literal otherwise: CR, LF, NUL and 8-bit octets
cannot be quoted (RFC 3501 §4.3), except that a client that enabled
UTF8=ACCEPT (RFC 6855 §3) takes UTF-8 in quoted strings. Atoms are used
only where the grammar says atom (flags, keywords, capability names).

Status lines carry an optional response code in brackets; the codes we
use are those of RFC 3501 §7.1 and of RFC 4315 (APPENDUID, COPYUID),
RFC 5530 (NONEXISTENT, ALREADYEXISTS, TRYCREATE...), RFC 7889 and
RFC 4469 (TOOBIG).
"""

from __future__ import annotations

from collections.abc import Iterable

from postroom.protocol.imap import utf7
from postroom.protocol.imap.syntax import ASTRING_CHARS

CRLF = b"\r\n"
NIL = b"NIL"
READY_FOR_LITERAL = b"+ Ready for literal data\r\n"
BYE_LOGOUT = b"* BYE Logging out\r\n"
_PRINTABLE = bytes(range(0x20, 0x7F))
_QUOTED_LIMIT = 1024
_ASTRING = bytes(ASTRING_CHARS)


def string(value: bytes, *, utf8: bool = False) -> bytes:
    """*value* as a quoted string or, if it must be, a literal."""
    if len(value) <= _QUOTED_LIMIT:
        rest = value.translate(None, _PRINTABLE)
        if not rest or (utf8 and _utf8_text(rest, value)):
            if b"\\" in value or b'"' in value:
                value = value.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
            return b'"' + value + b'"'
    return b"{%d}\r\n" % len(value) + value


def _utf8_text(rest: bytes, value: bytes) -> bool:
    # Only 8-bit octets may be left after removing printable ASCII.
    if min(rest) < 0x80:
        return False
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def nstring(value: bytes | None, *, utf8: bool = False) -> bytes:
    return NIL if value is None else string(value, utf8=utf8)


def astring(value: bytes) -> bytes:
    """An atom if *value* is one (and not "NIL"), else a string."""
    if value and not value.translate(None, _ASTRING) and value.upper() != NIL:
        return value
    return string(value)


def mailbox(name: str, *, utf8: bool = False) -> bytes:
    """A mailbox name: modified UTF-7 unless UTF8=ACCEPT is on."""
    wire = name.encode("utf-8") if utf8 else utf7.encode(name).encode("ascii")
    if wire.upper() == b"INBOX":
        return b"INBOX"
    return astring(wire) if wire.isascii() else string(wire, utf8=utf8)


def flag_list(flags: Iterable[str]) -> bytes:
    return ("(" + " ".join(flags) + ")").encode("ascii", "replace")


def status_line(tag: str, status: str, text: str, code: str | None = None) -> bytes:
    """``tag OK [CODE] text`` (tag "*" for untagged). The text is
    client-safe prose; line breaks in it are flattened."""
    text = text.replace("\r", " ").replace("\n", " ") or "completed"
    if code:
        line = f"{tag} {status} [{code}] {text}\r\n"
    else:
        line = f"{tag} {status} {text}\r\n"
    return line.encode("utf-8", "replace")


def untagged(data: bytes) -> bytes:
    return b"* " + data + CRLF


def continuation(text: str = "") -> bytes:
    return b"+ " + text.encode("ascii", "replace") + CRLF


def number_list(numbers: Iterable[int]) -> bytes:
    return " ".join(map(str, numbers)).encode("ascii")


def uid_set(uids: Iterable[int]) -> str:
    """A compact sequence set ("1:3,7") for UIDPLUS codes, in the order
    given: COPYUID pairs its two sets position by position."""
    out: list[str] = []
    start = prev = -1
    for uid in uids:
        if prev >= 0 and uid == prev + 1:
            prev = uid
            continue
        if prev >= 0:
            out.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = uid
    if prev >= 0:
        out.append(str(start) if start == prev else f"{start}:{prev}")
    return ",".join(out)
