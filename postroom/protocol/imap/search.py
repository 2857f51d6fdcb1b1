"""Evaluating SEARCH criteria against one message (RFC 3501 §6.4.4).

``Matcher`` is built once per SEARCH and asked about each message in
turn. Cheap tests (flags, sizes, sets, INTERNALDATE) come first in
every conjunction the client wrote, so that a message failing one
never has its content loaded; the content (a ``MessageData`` callable)
is read only for header, body and SENT* tests, and parsed once.

String tests are case-insensitive substring matches, as the RFC asks,
done on ``str.casefold()`` of decoded text: header values with their
RFC 2047 encoded words decoded, body text with its transfer encoding
and charset undone. Undecodable octets become U+FFFD rather than
failing the search.

Dates: BEFORE, ON and SINCE compare INTERNALDATE's date in its own time
zone, "disregarding time and timezone"; SENTBEFORE, SENTON and
SENTSINCE use the Date: header the same way. A message without a usable
Date: matches no SENT* key.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import email.errors
import email.header
import email.utils

from postroom.protocol.imap import mime
from postroom.protocol.imap.events import MessageData
from postroom.protocol.imap.searchkeys import (
    All,
    And,
    DateKey,
    HasFlag,
    Key,
    Not,
    Or,
    SetKey,
    SizeKey,
    TextKey,
)


def needs_content(key: Key) -> bool:
    """Whether evaluating *key* may read the message itself."""
    if isinstance(key, TextKey):
        return True
    if isinstance(key, DateKey):
        return key.sent
    if isinstance(key, Not):
        return needs_content(key.key)
    if isinstance(key, Or):
        return needs_content(key.left) or needs_content(key.right)
    if isinstance(key, And):
        return any(needs_content(k) for k in key.keys)
    return False


def _cost(key: Key) -> int:
    return 1 if needs_content(key) else 0


class Matcher:
    """*key* against messages of a mailbox whose largest sequence number
    and UID are given (they stand for "*" in sets)."""

    def __init__(self, key: Key, *, largest_seq: int, largest_uid: int) -> None:
        self.key = _order(key)
        self.largest_seq = largest_seq
        self.largest_uid = largest_uid

    def matches(self, seq: int, message: MessageData) -> bool:
        return _Message(self, seq, message).test(self.key)


def _order(key: Key) -> Key:
    # Cheap tests first within each AND; the result is the same.
    if isinstance(key, And):
        return And(tuple(sorted((_order(k) for k in key.keys), key=_cost)))
    if isinstance(key, Not):
        return Not(_order(key.key))
    if isinstance(key, Or):
        return Or(_order(key.left), _order(key.right))
    return key


class _Message:
    """One message under test, with lazily decoded content."""

    def __init__(self, matcher: Matcher, seq: int, message: MessageData) -> None:
        self.m = matcher
        self.seq = seq
        self.msg = message
        self._tree: mime.Part | None = None
        self._body: str | None = None

    def tree(self) -> mime.Part:
        if self._tree is None:
            self._tree = mime.parse(self.msg.load())
        return self._tree

    def test(self, key: Key) -> bool:
        if isinstance(key, HasFlag):
            return (key.flag in self.msg.flags) == key.present
        if isinstance(key, And):
            return all(self.test(k) for k in key.keys)
        if isinstance(key, All):
            return True
        if isinstance(key, Not):
            return not self.test(key.key)
        if isinstance(key, Or):
            return self.test(key.left) or self.test(key.right)
        if isinstance(key, SetKey):
            number = self.msg.uid if key.uid else self.seq
            largest = self.m.largest_uid if key.uid else self.m.largest_seq
            return any(a <= number <= b for a, b in key.set.resolve(largest))
        if isinstance(key, SizeKey):
            size = self.msg.octets()
            return size > key.size if key.larger else size < key.size
        if isinstance(key, DateKey):
            return self._date(key)
        return self._text(key)

    def _date(self, key: DateKey) -> bool:
        when: dt.datetime | None
        if key.sent:
            raw = self.tree().header("date") or b""
            try:
                when = email.utils.parsedate_to_datetime(raw.decode("latin-1"))
            except (TypeError, ValueError, IndexError):
                when = None
        else:
            when = self.msg.internaldate
        if when is None:
            return False
        day = when.date()
        if key.op == "before":
            return day < key.date
        if key.op == "on":
            return day == key.date
        return day >= key.date

    def _text(self, key: TextKey) -> bool:
        needle = key.needle.casefold()
        if key.where == "header":
            values = self.tree().headers(key.field)
            if not needle:
                return bool(values)  # "": the field is there at all
            return any(needle in decode_header(v).casefold() for v in values)
        if key.where == "body":
            return needle in self.body()
        header = decode_header(self.tree().header_bytes).casefold()
        return needle in header or needle in self.body()

    def body(self) -> str:
        if self._body is None:
            texts: list[str] = []
            _collect_text(self.tree(), texts)
            self._body = "\n".join(texts).casefold()
        return self._body


def decode_header(value: bytes) -> str:
    """A header value with RFC 2047 encoded words decoded."""
    text = value.decode("utf-8", "replace")
    if "=?" not in text:
        return text
    try:
        return str(email.header.make_header(email.header.decode_header(text)))
    except (LookupError, ValueError, email.errors.HeaderParseError):
        return text


def _collect_text(part: mime.Part, out: list[str]) -> None:
    if part.children:
        for child in part.children:
            _collect_text(child, out)
    elif part.message is not None:
        out.append(decode_header(part.message.header_bytes))
        _collect_text(part.message, out)
    elif part.maintype == "text":
        out.append(decode_body(part))


def decode_body(part: mime.Part) -> str:
    """A text part's body with transfer encoding and charset undone."""
    raw = part.body
    cte = (part.header("content-transfer-encoding") or b"").strip().lower()
    try:
        if cte == b"base64":
            raw = base64.b64decode(b"".join(raw.split()), validate=False)
        elif cte == b"quoted-printable":
            raw = binascii.a2b_qp(raw)
    except (binascii.Error, ValueError):
        pass
    charset = (part.param("charset") or b"utf-8").decode("latin-1")
    try:
        return raw.decode(charset, "replace")
    except LookupError:
        return raw.decode("utf-8", "replace")
