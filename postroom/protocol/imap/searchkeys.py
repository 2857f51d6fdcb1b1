"""SEARCH criteria (RFC 3501 §6.4.4) as a tree of values, and its parser.

The parser folds the many keys into a few shapes: flag tests (SEEN,
UNSEEN, KEYWORD...), date tests, size tests, text tests, sets, and the
three connectives. NEW and OLD become flag tests on \\Recent and \\Seen.
Evaluation is in ``search.py``.

Charsets: only UTF-8 and US-ASCII (RFC 9051 §6.4.4 requires UTF-8 and
nothing else); any other answers ``NO [BADCHARSET (UTF-8 US-ASCII)]``.
Search strings are decoded here, so evaluation compares ``str``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from postroom.protocol.imap.syntax import (
    ATOM_CHARS,
    SYSTEM_FLAGS,
    Cursor,
    ParseError,
    SequenceSet,
)

CHARSETS = ("UTF-8", "US-ASCII")


@dataclass(frozen=True, slots=True)
class All:
    pass


@dataclass(frozen=True, slots=True)
class HasFlag:
    flag: str
    present: bool = True


@dataclass(frozen=True, slots=True)
class DateKey:
    """``sent``: the Date: header, else INTERNALDATE; ``op`` is one of
    "before", "on", "since"."""

    sent: bool
    op: str
    date: dt.date


@dataclass(frozen=True, slots=True)
class SizeKey:
    larger: bool
    size: int


@dataclass(frozen=True, slots=True)
class TextKey:
    """``where`` is "header" (with ``field``), "body" or "text"."""

    where: str
    needle: str
    field: str = ""


@dataclass(frozen=True, slots=True)
class SetKey:
    uid: bool
    set: SequenceSet


@dataclass(frozen=True, slots=True)
class Not:
    key: Key


@dataclass(frozen=True, slots=True)
class Or:
    left: Key
    right: Key


@dataclass(frozen=True, slots=True)
class And:
    keys: tuple[Key, ...]


Key = All | HasFlag | DateKey | SizeKey | TextKey | SetKey | Not | Or | And

_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True),
    "DELETED": ("\\Deleted", True),
    "DRAFT": ("\\Draft", True),
    "FLAGGED": ("\\Flagged", True),
    "RECENT": ("\\Recent", True),
    "SEEN": ("\\Seen", True),
    "UNANSWERED": ("\\Answered", False),
    "UNDELETED": ("\\Deleted", False),
    "UNDRAFT": ("\\Draft", False),
    "UNFLAGGED": ("\\Flagged", False),
    "UNSEEN": ("\\Seen", False),
    "OLD": ("\\Recent", False),
}
_DATE_KEYS = {
    "BEFORE": "before",
    "ON": "on",
    "SINCE": "since",
    "SENTBEFORE": "before",
    "SENTON": "on",
    "SENTSINCE": "since",
}
_HEADER_KEYS = ("BCC", "CC", "FROM", "SUBJECT", "TO")
_KEYS_WITH_ARGUMENTS = frozenset(
    {*_DATE_KEYS, *_HEADER_KEYS}
    | {"LARGER", "SMALLER", "KEYWORD", "UNKEYWORD", "UID", "HEADER", "BODY", "TEXT"}
)


def parse_search(cur: Cursor) -> tuple[str, Key]:
    """The arguments of SEARCH: [CHARSET name] key *(SP key). Returns the
    charset (upper case) and one key (an ``And`` if there were more)."""
    charset = "US-ASCII"
    start = cur.pos
    if cur.run(ATOM_CHARS).upper() == b"CHARSET":
        cur.sp()
        charset = cur.astring().decode("ascii", "replace").upper()
        if charset not in CHARSETS:
            raise ParseError(
                "Unsupported charset", code="BADCHARSET (UTF-8 US-ASCII)", status="NO"
            )
        cur.sp()
    else:
        cur.pos = start
    keys = [_key(cur, 0)]
    while not cur.at_end():
        cur.sp()
        keys.append(_key(cur, 0))
    return charset, keys[0] if len(keys) == 1 else And(tuple(keys))


def _key(cur: Cursor, depth: int) -> Key:
    if depth > 100:
        raise ParseError("Search keys nested too deeply")
    c = cur.peek()
    if c == ord("("):
        cur.pos += 1
        keys = [_key(cur, depth + 1)]
        while not cur.maybe(b")"):
            cur.sp()
            keys.append(_key(cur, depth + 1))
        return keys[0] if len(keys) == 1 else And(tuple(keys))
    if c == ord("*") or 0x30 <= c <= 0x39:
        return SetKey(False, cur.sequence_set())
    name = cur.run(ATOM_CHARS).decode("ascii").upper()
    if not name:
        raise ParseError("Expected a search key")

    if name == "ALL":
        return All()
    if name in _FLAG_KEYS:
        flag, present = _FLAG_KEYS[name]
        return HasFlag(flag, present)
    if name == "NEW":
        return And((HasFlag("\\Recent"), HasFlag("\\Seen", False)))
    if name == "NOT":
        cur.sp()
        return Not(_key(cur, depth + 1))
    if name == "OR":
        cur.sp()
        left = _key(cur, depth + 1)
        cur.sp()
        return Or(left, _key(cur, depth + 1))

    if name not in _KEYS_WITH_ARGUMENTS:
        raise ParseError(f"Unknown search key {name[:20]}")
    cur.sp()
    if name in _DATE_KEYS:
        return DateKey(name.startswith("SENT"), _DATE_KEYS[name], cur.date())
    if name in ("LARGER", "SMALLER"):
        return SizeKey(name == "LARGER", cur.number())
    if name in ("KEYWORD", "UNKEYWORD"):
        flag = cur.atom().decode("ascii")
        if flag.startswith("\\"):
            flag = SYSTEM_FLAGS.get(flag[1:].lower(), flag)
        return HasFlag(flag, name == "KEYWORD")
    if name == "UID":
        return SetKey(True, cur.sequence_set())
    if name in _HEADER_KEYS:
        return TextKey("header", _text(cur), name.lower())
    if name == "HEADER":
        field = cur.astring().decode("ascii", "replace").lower()
        cur.sp()
        return TextKey("header", _text(cur), field)
    if name in ("BODY", "TEXT"):
        return TextKey(name.lower(), _text(cur))
    raise ParseError(f"Unknown search key {name[:20]}")


def _text(cur: Cursor) -> str:
    try:
        return cur.astring().decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError("Search string is not UTF-8") from None
