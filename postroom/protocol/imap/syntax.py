"""Reading the arguments of an IMAP command (RFC 3501 §9, formal syntax).

A ``Cursor`` walks the pieces ``framing.Framer`` assembled: text, then a
literal, then text again. Every reader either returns a value and moves
past it or raises ``ParseError``, which the core turns into a tagged BAD
(or NO, when the error carries a response code that calls for one). The
readers name their ABNF rule; where we accept more than RFC 3501 says, a
comment says why.

Strings come back as ``bytes``: whether they are UTF-8, US-ASCII or a
charset named by SEARCH is for the caller to decide.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from postroom.protocol.imap.framing import Literal, Parts


class ParseError(Exception):
    """The command does not parse. ``code`` is a response code to send
    with the tagged answer (``BADCHARSET``...), ``status`` the answer."""

    def __init__(self, text: str, code: str | None = None, status: str = "BAD"):
        super().__init__(text)
        self.text = text
        self.code = code
        self.status = status


def _bits(chars: bytes) -> frozenset[int]:
    return frozenset(chars)


# atom-specials: "(" / ")" / "{" / SP / CTL / list-wildcards /
# quoted-specials / resp-specials; 8-bit octets are not CHAR either.
_SPECIALS = _bits(b'(){ %*"\\]') | frozenset(range(0x20)) | {0x7F}
ATOM_CHARS = frozenset(range(0x21, 0x7F)) - _SPECIALS
ASTRING_CHARS = ATOM_CHARS | {ord("]")}
# LIST patterns may also hold the wildcards (list-char).
LIST_CHARS = ASTRING_CHARS | _bits(b"%*")
# sequence-set characters.
# XXX: "$" (SEARCHRES, RFC 5182) is not supported because nothing saves
# search results yet; SEARCHRES is not advertised, so clients do not send
# it, and "$" gets BAD like any other bad set.
SEQ_CHARS = _bits(b"0123456789:*,")

MONTHS = (
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN",
    "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """A sequence-set; ``0`` stands for "*" (no message has number 0).
    Each range is (low, high) as written; ``resolve`` orders them."""

    ranges: tuple[tuple[int, int], ...]

    def resolve(self, largest: int) -> list[tuple[int, int]]:
        """Ranges with "*" replaced by *largest*, each low <= high."""
        out = []
        for a, b in self.ranges:
            a = a or largest
            b = b or largest
            out.append((a, b) if a <= b else (b, a))
        return out


class Cursor:
    """A position in a command's pieces."""

    __slots__ = ("_parts", "_index", "text", "pos")

    def __init__(self, parts: Parts) -> None:
        self._parts = parts
        self._index = 0
        first = parts[0]
        assert isinstance(first, bytes)
        self.text: bytes = first
        self.pos = 0

    # -- low level ----------------------------------------------------

    def peek(self) -> int:
        """The next octet, or -1 at the end of a text piece."""
        if self.pos < len(self.text):
            return self.text[self.pos]
        return -1

    def at_end(self) -> bool:
        return self.pos >= len(self.text) and self._index == len(self._parts) - 1

    def at_end_of_pieces(self) -> bool:
        """The current text piece is the last: no literal follows."""
        return self._index == len(self._parts) - 1

    def at_literal(self) -> bool:
        return self.pos >= len(self.text) and self._index < len(self._parts) - 1

    def end(self) -> None:
        """Nothing may follow."""
        if not self.at_end():
            raise ParseError("Unexpected extra arguments")

    def sp(self) -> None:
        if self.peek() != 0x20:
            raise ParseError("Expected a space")
        self.pos += 1

    def maybe(self, octet: bytes) -> bool:
        """Skip *octet* if it is next."""
        if self.peek() == octet[0]:
            self.pos += 1
            return True
        return False

    def expect(self, octet: bytes) -> None:
        if not self.maybe(octet):
            raise ParseError(f"Expected {octet.decode()!r}")

    def run(self, allowed: frozenset[int]) -> bytes:
        """The longest run of *allowed* octets (maybe empty)."""
        text, start = self.text, self.pos
        pos = start
        n = len(text)
        while pos < n and text[pos] in allowed:
            pos += 1
        self.pos = pos
        return text[start:pos]

    def literal(self) -> Literal:
        if not self.at_literal():
            raise ParseError("Expected a literal")
        lit = self._parts[self._index + 1]
        assert isinstance(lit, Literal)
        self._index += 2
        nxt = self._parts[self._index]
        assert isinstance(nxt, bytes)
        self.text, self.pos = nxt, 0
        return lit

    # -- RFC 3501 rules -------------------------------------------------

    def atom(self) -> bytes:
        value = self.run(ATOM_CHARS)
        if not value:
            raise ParseError("Expected an atom")
        return value

    def quoted(self) -> bytes:
        self.expect(b'"')
        text = self.text
        end = text.find(b'"', self.pos)
        chunk = text[self.pos : end]
        if end >= 0 and b"\\" not in chunk:
            self.pos = end + 1  # The common case: no escapes.
            return chunk
        out = bytearray()
        pos, n = self.pos, len(text)
        while pos < n:
            c = text[pos]
            if c == 0x22:
                self.pos = pos + 1
                return bytes(out)
            if c == 0x5C:
                pos += 1
                if pos >= n or text[pos] not in (0x22, 0x5C):
                    raise ParseError("Bad escape in quoted string")
                c = text[pos]
            out.append(c)
            pos += 1
        raise ParseError("Unterminated quoted string")

    def string(self) -> bytes:
        if self.peek() == 0x22:
            return self.quoted()
        if self.at_literal():
            lit = self.literal()
            if lit.binary:
                raise ParseError("literal8 is not allowed here")
            return lit.data
        raise ParseError("Expected a string")

    def astring(self) -> bytes:
        c = self.peek()
        if c == 0x22 or c == -1:
            return self.string()
        value = self.run(ASTRING_CHARS)
        if not value:
            raise ParseError("Expected a string")
        return value

    def nstring(self) -> bytes | None:
        if self.text[self.pos : self.pos + 3].upper() == b"NIL":
            self.pos += 3
            return None
        return self.string()

    def list_mailbox(self) -> bytes:
        """list-mailbox: like astring, with the wildcards allowed."""
        c = self.peek()
        if c == 0x22 or c == -1:
            return self.string()
        value = self.run(LIST_CHARS)
        if not value:
            raise ParseError("Expected a mailbox pattern")
        return value

    def number(self) -> int:
        digits = self.run(_DIGITS)
        if not digits or len(digits) > 10:
            raise ParseError("Expected a number")
        value = int(digits)
        if value > 0xFFFFFFFF:
            raise ParseError("Number out of range")
        return value

    def nz_number(self) -> int:
        value = self.number()
        if value == 0:
            raise ParseError("Expected a non-zero number")
        return value

    def sequence_set(self) -> SequenceSet:
        raw = self.run(SEQ_CHARS)
        if not raw:
            raise ParseError("Expected a sequence set")
        return parse_sequence_set(raw)

    def date(self) -> dt.date:
        """date: date-text, optionally quoted (RFC 3501 §9)."""
        quoted = self.maybe(b'"')
        raw = self.run(_DATE_CHARS)
        if quoted:
            self.expect(b'"')
        try:
            day, month, year = raw.decode().split("-")
            return dt.date(int(year), MONTHS.index(month.upper()) + 1, int(day))
        except ValueError:
            raise ParseError("Bad date") from None

    def date_time(self) -> dt.datetime:
        """date-time: "dd-Mon-yyyy hh:mm:ss +zzzz", quoted."""
        raw = self.quoted()
        try:
            return parse_date_time(raw.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            raise ParseError("Bad date-time") from None

    def flag_list(self) -> tuple[str, ...]:
        """flag-list: "(" [flag *(SP flag)] ")"."""
        self.expect(b"(")
        flags: list[str] = []
        while not self.maybe(b")"):
            if flags:
                self.sp()
            flags.append(self.flag())
        return tuple(flags)

    def flag(self) -> str:
        """flag: a system flag ("\\" atom) or a keyword (atom)."""
        backslash = self.maybe(b"\\")
        name = self.atom().decode("ascii")
        if not backslash:
            return name
        canonical = SYSTEM_FLAGS.get(name.lower())
        # Unknown "\" flags are flag-extension; keep them as written.
        return canonical or "\\" + name


_DIGITS = _bits(b"0123456789")
_DATE_CHARS = ATOM_CHARS - {ord('"')}

SYSTEM_FLAGS = {
    "seen": "\\Seen",
    "answered": "\\Answered",
    "flagged": "\\Flagged",
    "deleted": "\\Deleted",
    "draft": "\\Draft",
    "recent": "\\Recent",
}


def parse_sequence_set(raw: bytes) -> SequenceSet:
    ranges = []
    for item in raw.split(b","):
        low, colon, high = item.partition(b":")
        a = _seq_number(low)
        b = _seq_number(high) if colon else a
        ranges.append((a, b))
    return SequenceSet(tuple(ranges))


def _seq_number(raw: bytes) -> int:
    if raw == b"*":
        return 0
    if not raw.isdigit() or len(raw) > 10 or raw[0] == 0x30:
        raise ParseError("Bad sequence set")
    value = int(raw)
    if value > 0xFFFFFFFF:
        raise ParseError("Bad sequence set")
    return value


def parse_date_time(text: str) -> dt.datetime:
    """RFC 3501 date-time ("dd-Mon-yyyy hh:mm:ss +zzzz"); the day may be
    one digit with a leading space. ``ValueError`` if it is not one."""
    if (
        len(text) != 26
        or text[2] != "-"
        or text[6] != "-"
        or text[11] != " "
        or text[20] != " "
        or text[21] not in "+-"
        or text[0] not in " 0123"
        or not (text[22:26].isascii() and text[22:26].isdigit())
    ):
        raise ValueError(text)
    day = int(text[0:2].strip())
    month = MONTHS.index(text[3:6].upper()) + 1
    year = int(text[7:11])
    hh, mm, ss = (int(x) for x in text[12:20].split(":"))
    sign = -1 if text[21] == "-" else 1
    zone = dt.timedelta(hours=int(text[22:24]), minutes=int(text[24:26]))
    tz = dt.timezone(sign * zone)
    return dt.datetime(year, month, day, hh, mm, ss, tzinfo=tz)


def format_date_time(when: dt.datetime) -> str:
    """The RFC 3501 date-time form of an aware *when* (naive means UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    offset = when.utcoffset() or dt.timedelta()
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    return (
        f"{when.day:02d}-{MONTHS[when.month - 1].title()}-{when.year:04d} "
        f"{when.hour:02d}:{when.minute:02d}:{when.second:02d} "
        f"{sign}{minutes // 60:02d}{minutes % 60:02d}"
    )
