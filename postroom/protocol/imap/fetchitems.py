"""FETCH data items (RFC 3501 §6.4.5) as values, and their parser.

``parse_fetch_items`` turns the argument of FETCH into a tuple of
``Item``; the macros ALL, FAST and FULL are expanded here, so nothing
later knows them. ``Request`` sums up what the items need, so that the
driver loads only what is asked for: FLAGS and UID need the index,
RFC822.SIZE the size, and only the BODY/RFC822/ENVELOPE family needs the
message's bytes at all.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from postroom.protocol.imap.syntax import ATOM_CHARS, Cursor, ParseError

# Items that are only a name; their response label is the same name.
SIMPLE = frozenset(
    {
        "UID",
        "FLAGS",
        "INTERNALDATE",
        "RFC822.SIZE",
        "ENVELOPE",
        "BODYSTRUCTURE",
        "BODY",
        "RFC822",
        "RFC822.HEADER",
        "RFC822.TEXT",
    }
)
MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
# Items that need the message content (everything else is index data).
NEEDS_CONTENT = frozenset(
    {"ENVELOPE", "BODYSTRUCTURE", "BODY", "RFC822", "RFC822.HEADER", "RFC822.TEXT"}
)
_SECTION_CHARS = ATOM_CHARS - {ord("["), ord("<")}


@dataclass(frozen=True, slots=True)
class Section:
    """``BODY[part.spec (fields)]<origin.count>``.

    ``part`` is the part path (empty for the whole message); ``spec`` is
    "", "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT" or
    "MIME"; ``fields`` the upper-cased field names for the two FIELDS
    specs; ``partial`` is (origin, count) or None.
    """

    part: tuple[int, ...] = ()
    spec: str = ""
    fields: tuple[str, ...] = ()
    partial: tuple[int, int] | None = None
    peek: bool = False
    binary: bool = False  # BINARY[...] (RFC 3516): decoded content
    size_only: bool = False  # BINARY.SIZE[...]

    def label(self) -> str:
        """The item name in the response: no PEEK, origin only."""
        inside = ".".join(str(n) for n in self.part)
        if self.spec:
            inside = f"{inside}.{self.spec}" if inside else self.spec
        if self.fields:
            inside += " (" + " ".join(self.fields) + ")"
        name = "BINARY" if self.binary else "BODY"
        if self.size_only:
            return f"BINARY.SIZE[{inside}]"
        label = f"{name}[{inside}]"
        if self.partial is not None:
            label += f"<{self.partial[0]}>"
        return label


Item = str | Section


@dataclass(frozen=True, slots=True)
class Request:
    """A parsed FETCH argument and what it needs."""

    items: tuple[Item, ...]
    needs_content: bool
    sets_seen: bool  # a non-PEEK body section, RFC822 or RFC822.TEXT


def parse_fetch_items(cur: Cursor) -> Request:
    """The argument of FETCH: one item, a macro, or a list of items.

    Clients ask the same few things again and again (a client that
    fetches message by message sends one FETCH per message), so an
    argument that ends the command is parsed once and then looked up:
    a ``Request`` is immutable, and parsing is a pure function."""
    text, start = cur.text, cur.pos
    last = cur.at_end_of_pieces()
    if last:
        cached = _parsed.get(text[start:])
        if cached is not None:
            cur.pos = len(text)
            return cached
    request = _parse_fetch_items(cur)
    if last and cur.pos == len(text) and len(_parsed) < _PARSED_MAX:
        _parsed[text[start:]] = request
    return request


# FETCH arguments as parsed (see parse_fetch_items), by their octets.
_parsed: dict[bytes, Request] = {}
_PARSED_MAX = 256


def _parse_fetch_items(cur: Cursor) -> Request:
    items: list[Item] = []
    if cur.maybe(b"("):
        while not cur.maybe(b")"):
            if items:
                cur.sp()
            items.append(_item(cur))
    else:
        name = _name(cur)
        if name in MACROS:
            items.extend(MACROS[name])
        else:
            items.append(_item(cur, name))
    if not items:
        raise ParseError("Empty fetch list")
    needs = sets_seen = False
    for item in items:
        if isinstance(item, Section):
            needs = True
            sets_seen = sets_seen or not item.peek
        elif item in NEEDS_CONTENT:
            needs = True
            sets_seen = sets_seen or item in ("RFC822", "RFC822.TEXT")
    return Request(tuple(items), needs, sets_seen)


def _name(cur: Cursor) -> str:
    name = cur.run(_SECTION_CHARS).decode("ascii").upper()
    if not name:
        raise ParseError("Expected a fetch item")
    return name


def _item(cur: Cursor, name: str | None = None) -> Item:
    if name is None:
        name = _name(cur)
    if cur.peek() == ord("["):
        if name in ("BODY", "BODY.PEEK"):
            return _section(cur, peek=name == "BODY.PEEK", binary=False)
        if name in ("BINARY", "BINARY.PEEK", "BINARY.SIZE"):
            # RFC 3516: a part's content with its transfer encoding undone.
            section = _section(cur, peek=name != "BINARY", binary=True)
            if name == "BINARY.SIZE":
                if section.partial is not None:
                    raise ParseError("BINARY.SIZE takes no partial")
                return dataclasses.replace(section, size_only=True)
            return section
        raise ParseError(f"Unexpected section after {name[:20]}")
    if name in SIMPLE:
        return name
    raise ParseError(f"Unknown fetch item {name[:20]}")


def _section(cur: Cursor, *, peek: bool, binary: bool) -> Section:
    # section-spec: a part path "1.2.3", then optionally "." and a text
    # spec; or the text spec alone (never MIME, which needs a part).
    cur.expect(b"[")
    part: list[int] = []
    spec = ""
    fields: tuple[str, ...] = ()
    if cur.peek() != ord("]"):
        while 0x30 <= cur.peek() <= 0x39:
            part.append(cur.nz_number())
            if not cur.maybe(b"."):
                break
            if not 0x30 <= cur.peek() <= 0x39:
                spec, fields = _spec(cur, nested=True)
                break
        if not part:
            spec, fields = _spec(cur, nested=False)
    cur.expect(b"]")
    if binary and spec:
        raise ParseError("BINARY takes a part number only")
    partial = None
    if cur.maybe(b"<"):
        origin = cur.number()
        cur.expect(b".")
        partial = (origin, cur.nz_number())
        cur.expect(b">")
    return Section(tuple(part), spec, fields, partial, peek, binary)


def _spec(cur: Cursor, *, nested: bool) -> tuple[str, tuple[str, ...]]:
    word = cur.run(ATOM_CHARS - {ord("]")}).decode("ascii").upper()
    if word == "MIME" and nested:
        return word, ()
    if word in ("HEADER", "TEXT"):
        return word, ()
    if word not in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        raise ParseError("Bad section specifier")
    cur.sp()
    cur.expect(b"(")
    names: list[str] = []
    while not cur.maybe(b")"):
        if names:
            cur.sp()
        name = cur.astring()
        if not name.isascii() or b":" in name:
            raise ParseError("Bad header field name")
        names.append(name.decode("ascii").upper())
    if not names:
        raise ParseError("Empty header field list")
    return word, tuple(names)
