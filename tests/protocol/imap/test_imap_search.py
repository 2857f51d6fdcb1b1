"""SEARCH: parsing every key of RFC 3501 §6.4.4 and matching it against
a small mailbox. Each row is (criteria, sequence numbers that match)."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from messages import ALTERNATIVE, BASE64_TEXT, GROUPS, MIXED, PLAIN

from postroom.protocol.imap.events import MessageData
from postroom.protocol.imap.framing import Literal
from postroom.protocol.imap.search import Matcher, needs_content
from postroom.protocol.imap.searchkeys import parse_search
from postroom.protocol.imap.syntax import Cursor, ParseError

UTC = dt.UTC
MAILBOX = [
    # seq 1..5; UIDs leave gaps so that UID and sequence keys differ.
    MessageData(10, ("\\Seen", "\\Answered"), dt.datetime(2024, 3, 6, 9, tzinfo=UTC),
                None, PLAIN),
    MessageData(20, ("\\Recent", "$Work"), dt.datetime(2024, 3, 7, 23, tzinfo=UTC),
                None, ALTERNATIVE),
    MessageData(30, ("\\Deleted", "\\Seen", "\\Flagged"),
                dt.datetime(2024, 3, 8, 0, 0, tzinfo=UTC), None, MIXED),
    MessageData(40, ("\\Draft", "\\Recent", "\\Seen"),
                dt.datetime(2024, 2, 1, 12, tzinfo=UTC), None, GROUPS),
    MessageData(50, (), dt.datetime(2024, 2, 2, 1, tzinfo=UTC), None, BASE64_TEXT),
]  # fmt: skip


def search(criteria: str) -> list[int]:
    text, _, literal = criteria.encode().partition(b"{7}\r\n")
    parts: list[bytes | Literal] = [text]
    if literal:
        parts += [Literal(literal), b""]
    _, key = parse_search(Cursor(parts))
    matcher = Matcher(key, largest_seq=len(MAILBOX), largest_uid=50)
    return [i + 1 for i, m in enumerate(MAILBOX) if matcher.matches(i + 1, m)]


ROWS = [
    ("ALL", [1, 2, 3, 4, 5]),
    ("ANSWERED", [1]),
    ("UNANSWERED", [2, 3, 4, 5]),
    ("DELETED", [3]),
    ("UNDELETED", [1, 2, 4, 5]),
    ("DRAFT", [4]),
    ("UNDRAFT", [1, 2, 3, 5]),
    ("FLAGGED", [3]),
    ("UNFLAGGED", [1, 2, 4, 5]),
    ("SEEN", [1, 3, 4]),
    ("UNSEEN", [2, 5]),
    ("RECENT", [2, 4]),
    ("NEW", [2]),
    ("OLD", [1, 3, 5]),
    ("KEYWORD $Work", [2]),
    ("UNKEYWORD $Work", [1, 3, 4, 5]),
    ("1:2", [1, 2]),
    ("2,4:*", [2, 4, 5]),
    ("*", [5]),
    ("UID 20:40", [2, 3, 4]),
    ("UID 45:*", [5]),
    ("UID 60:*", [5]),  # "*" is the largest UID; 60:* is 50:60
    ("BEFORE 7-Mar-2024", [1, 4, 5]),
    ("ON 7-Mar-2024", [2]),
    ('SINCE "7-Mar-2024"', [2, 3]),
    ("SENTBEFORE 6-Mar-2024", [5]),
    ("SENTON 6-Mar-2024", [1]),
    ("SENTON 1-Feb-2024", [5]),  # the Date: header's own day, not UTC's
    ("SENTSINCE 1-Jan-2000", [1, 5]),  # the others have no Date:
    ("LARGER 300", [1, 3]),  # sizes: 320 243 459 168 206
    ("SMALLER 206", [4]),
    ("LARGER 459", []),
    ("FROM jane", [1]),
    ("FROM JANE@EXAMPLE.ORG", [1]),
    ('FROM "Doe, Jane"', [1]),
    ('FROM "jörg"', [4]),  # decoded from ISO-8859-1 QP
    ('CHARSET UTF-8 FROM "JÖRG"', [4]),
    ("TO bob", [1]),
    ("TO undisclosed", [4]),
    ("CC team", [4]),
    ("BCC anyone", []),
    ('SUBJECT "grüße"', [1]),  # decoded from RFC 2047 Q
    ('SUBJECT "überweisung"', [5]),  # decoded from RFC 2047 B
    ('SUBJECT "CAFÉ"', [4]),  # raw UTF-8 header, case-folded
    ("HEADER Message-ID p1@", [1]),
    ('HEADER Reply-To ""', [4]),  # an empty string: the field exists
    ('HEADER X-Missing ""', []),
    ('BODY "café"', [1]),  # quoted-printable decoded
    ("BODY {7}\r\nmünchen", [5]),  # base64 decoded; a literal
    ("BODY html", [2]),
    ("BODY Inner", [3]),  # headers of an attached message are its text
    ("BODY Alt", []),  # BODY is not the header
    ("TEXT Alt", [2]),
    ("TEXT html", [2]),
    ("NOT SEEN", [2, 5]),
    ("NOT NOT SEEN", [1, 3, 4]),
    ("OR DELETED DRAFT", [3, 4]),
    ("OR (SEEN FLAGGED) UID 50", [3, 5]),
    ("SEEN UNDELETED", [1, 4]),
    ("(SEEN) (UNDELETED) NOT DRAFT", [1]),
]


@pytest.mark.parametrize(("criteria", "expected"), ROWS)
def test_search(criteria: str, expected: list[int]) -> None:
    assert search(criteria) == expected


BAD = [
    "",
    "BOGUS",
    "FROM",
    "BEFORE 32-Jan-2024",
    "BEFORE 1-Foo-2024",
    "LARGER x",
    "OR SEEN",
    "(SEEN",
    "SEEN)",
    "UID 0",
    "1:x",
    "NOT",
    "KEYWORD \\Seen",  # a keyword is an atom, never a system flag
    "FROM jörg",  # 8-bit text must be quoted or a literal
    "(" * 200 + "ALL" + ")" * 200,
]


@pytest.mark.parametrize("criteria", BAD)
def test_bad_criteria(criteria: str) -> None:
    with pytest.raises(ParseError) as info:
        cur = Cursor([criteria.encode()])
        parse_search(cur)
        cur.end()
    assert info.value.status == "BAD"


def test_unknown_charset_is_no_badcharset() -> None:
    with pytest.raises(ParseError) as info:
        parse_search(Cursor([b"CHARSET ISO-8859-1 TEXT x"]))
    assert (info.value.status, info.value.code) == ("NO", "BADCHARSET (UTF-8 US-ASCII)")


def test_content_loaded_only_when_needed() -> None:
    _, key = parse_search(Cursor([b"SEEN SUBJECT x"]))
    assert needs_content(key)
    _, key = parse_search(Cursor([b"SEEN LARGER 10 UID 1:* BEFORE 1-Jan-2020"]))
    assert not needs_content(key)

    loads = []

    def content() -> bytes:
        loads.append(1)
        return PLAIN

    # Flags are tested before the subject, so an unseen message is never
    # read even though the client wrote the subject test first.
    _, key = parse_search(Cursor([b"SUBJECT x SEEN"]))
    matcher = Matcher(key, largest_seq=1, largest_uid=1)
    assert not matcher.matches(1, MessageData(1, (), None, 10, content))
    assert loads == []


TOKENS = st.sampled_from(
    [b"\r\n", b"Subject: ", b"Date: ", b"From: ", b"=?utf-8?b?@@?=",
     b"=?rot13?q?x?=", b"=?utf-8?q?=FF?=", b"Mon, 32 Foo 99999 99:99",
     b"Content-Type: text/plain; charset=zlib", b"Content-Type: text/x; charset=",
     b"Content-Transfer-Encoding: base64",
     b"Content-Transfer-Encoding: quoted-printable",
     b"=", b"=Z", b"\xff\xfe", b"abc", b"Content-Type: multipart/mixed; boundary=b",
     b"--b"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(TOKENS, max_size=30))
def test_fuzz_search_never_raises(tokens: list[bytes]) -> None:
    message = MessageData(1, (), None, None, b"".join(tokens))
    _, key = parse_search(
        Cursor([b"OR TEXT zz OR SUBJECT x OR SENTON 1-Jan-2024 HEADER From y"])
    )
    Matcher(key, largest_seq=1, largest_uid=1).matches(1, message)
