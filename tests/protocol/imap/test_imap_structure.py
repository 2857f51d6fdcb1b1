"""ENVELOPE, BODY, BODYSTRUCTURE and BODY[section] on real-world-shaped
messages. Every expected string was worked out by hand from the message
text in ``messages.py`` (sizes are octets between the part's blank line
and the CRLF that belongs to the next boundary, RFC 2046 §5.1.1)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from messages import ALTERNATIVE, GROUPS, MIXED, NO_HEADERS, PLAIN

from postroom.protocol.imap import envelope, fetch, mime, sections, structure
from postroom.protocol.imap.events import MessageData
from postroom.protocol.imap.fetchitems import Request, Section, parse_fetch_items
from postroom.protocol.imap.framing import Literal
from postroom.protocol.imap.syntax import Cursor

JANE = b'(("Doe, Jane" NIL "jane" "example.org"))'
INNER = b'((NIL NIL "inner" "example.net"))'
A = b'((NIL NIL "a" "example.org"))'

ENVELOPES = [
    (
        PLAIN,
        b'("Wed, 6 Mar 2024 09:00:00 +0000" "=?utf-8?q?Gr=C3=BC=C3=9Fe?=" '
        + JANE + b" " + JANE + b" " + JANE + b" "
        b'((NIL NIL "bob" "example.net")("Carol" NIL "carol" "example.com")) '
        b'NIL NIL NIL "<p1@example.org>")',
    ),
    (ALTERNATIVE, b'(NIL "Alt" ' + A + b" " + A + b" " + A + b" NIL NIL NIL NIL NIL)"),
    (NO_HEADERS, b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"),
    (
        # 8-bit subject: a literal. Encoded words pass through raw. An
        # empty Reply-To counts as absent. Groups are bracketed.
        GROUPS,
        b"(NIL {5}\r\nCaf\xc3\xa9 "
        b'(("=?iso-8859-1?q?J=F6rg?=" NIL "jorg" "example.de")) '
        b'(("=?iso-8859-1?q?J=F6rg?=" NIL "jorg" "example.de")) '
        b'(("=?iso-8859-1?q?J=F6rg?=" NIL "jorg" "example.de")) '
        b'((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL)) '
        b'((NIL NIL "Team" NIL)(NIL NIL "a" "x.org")("B" NIL "b" "y.org")'
        b'(NIL NIL NIL NIL)(NIL NIL "c" "z.org")) NIL NIL NIL)',
    ),
]  # fmt: skip


@pytest.mark.parametrize(("message", "expected"), ENVELOPES)
def test_envelope(message: bytes, expected: bytes) -> None:
    assert envelope.render_envelope(mime.parse(message)) == expected


INNER_PART = (
    b'("message" "rfc822" NIL NIL NIL "7bit" 53 (NIL "Inner" '
    + INNER + b" " + INNER + b" " + INNER
    + b' NIL NIL NIL NIL NIL) ("text" "plain" ("charset" "us-ascii") NIL NIL '
    b'"7bit" 10 1%s) 4%s)'
)  # fmt: skip

BODYSTRUCTURES = [
    (
        PLAIN,
        b'("text" "plain" ("charset" "utf-8") NIL NIL "quoted-printable" 36 2 '
        b"NIL NIL NIL NIL)",
        b'("text" "plain" ("charset" "utf-8") NIL NIL "quoted-printable" 36 2)',
    ),
    (
        ALTERNATIVE,
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 10 1 NIL NIL NIL NIL)'
        b'("text" "html" ("charset" "utf-8") NIL NIL "7bit" 11 1 NIL NIL NIL NIL) '
        b'"alternative" ("boundary" "XX") NIL NIL NIL)',
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 10 1)'
        b'("text" "html" ("charset" "utf-8") NIL NIL "7bit" 11 1) "alternative")',
    ),
    (
        MIXED,
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 13 1 NIL NIL "en" NIL)'
        b'("application" "pdf" ("name" "r.pdf") "<c1@x>" NIL "base64" 8 NIL '
        b'("attachment" ("filename" "r.pdf")) NIL NIL)'
        + INNER_PART % (b" NIL NIL NIL NIL", b" NIL NIL NIL NIL")
        + b' "mixed" ("boundary" "outer") NIL NIL NIL)',
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 13 1)'
        b'("application" "pdf" ("name" "r.pdf") "<c1@x>" NIL "base64" 8)'
        + INNER_PART % (b"", b"")
        + b' "mixed")',
    ),
    (
        NO_HEADERS,
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 13 1 NIL NIL NIL NIL)',
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 13 1)',
    ),
]  # fmt: skip


@pytest.mark.parametrize(("message", "extended", "basic"), BODYSTRUCTURES)
def test_bodystructure(message: bytes, extended: bytes, basic: bytes) -> None:
    tree = mime.parse(message)
    assert structure.render(tree, extended=True) == extended
    assert structure.render(tree, extended=False) == basic


def section(text: str) -> Section:
    item = parse_fetch_items(Cursor([text.encode()])).items[0]
    assert isinstance(item, Section)
    return item


SECTIONS = [
    (ALTERNATIVE, "BODY[1]", b"plain body"),
    (ALTERNATIVE, "BODY[2]", b"<p>html</p>"),
    (ALTERNATIVE, "BODY[1.MIME]", b"Content-Type: text/plain\r\n\r\n"),
    (ALTERNATIVE, "BODY[3]", None),
    (ALTERNATIVE, "BODY[1.1]", None),
    (ALTERNATIVE, "BODY[TEXT]", ALTERNATIVE[ALTERNATIVE.index(b"preamble") :]),
    (MIXED, "BODY[2]", b"JVBERi0="),
    (MIXED, "BODY[3]", b"From: inner@example.net\r\nSubject: Inner\r\n\r\ninner body"),
    (MIXED, "BODY[3.HEADER]", b"From: inner@example.net\r\nSubject: Inner\r\n\r\n"),
    (MIXED, "BODY[3.TEXT]", b"inner body"),
    (MIXED, "BODY[3.1]", b"inner body"),
    (MIXED, "BODY[3.HEADER.FIELDS (subject)]", b"Subject: Inner\r\n\r\n"),
    (MIXED, "BODY[1.TEXT]", None),  # TEXT of a part that is no message
    (
        MIXED,
        "BODY[HEADER.FIELDS (CONTENT-TYPE)]",
        b"Content-Type: multipart/mixed;\r\n\tboundary=outer\r\n\r\n",
    ),
    (
        MIXED,
        "BODY[HEADER.FIELDS.NOT (Content-Type FROM)]",
        b"Subject: Mixed\r\n\r\n",
    ),
    (PLAIN, "BODY[1]", b"Hello=20there, caf=C3=A9\r\nLine two\r\n"),
    (PLAIN, "BODY[TEXT]", b"Hello=20there, caf=C3=A9\r\nLine two\r\n"),
    (PLAIN, "BODY[]", PLAIN),
    (PLAIN, "BODY[]<0.4>", b"From"),
    (PLAIN, "BODY[TEXT]<5.7>", b"=20ther"),
    (PLAIN, "BODY[TEXT]<30.100>", b" two\r\n"),
    (PLAIN, "BODY[TEXT]<36.10>", b""),
    (PLAIN, "BODY[TEXT]<999.1>", b""),
    (NO_HEADERS, "BODY[HEADER]", b"\r\n"),  # just the blank line
    (NO_HEADERS, "BODY[TEXT]", b"Just a body\r\n"),
]


@pytest.mark.parametrize(("message", "spec", "expected"), SECTIONS)
def test_sections(message: bytes, spec: str, expected: bytes | None) -> None:
    item = section(spec)
    tree = mime.parse(message)
    octets = sections.extract(tree, item)
    if octets is not None and item.partial is not None:
        octets = sections.partial(octets, *item.partial)
    assert (None if octets is None else bytes(octets)) == expected


def render(message: bytes, items: str, **kw: bool) -> bytes:
    request = parse_fetch_items(Cursor([items.encode()]))
    data = MessageData(7, ("\\Seen",), None, None, message)
    return b"".join(fetch.render(3, data, request, with_uid=kw.get("uid", False)))


def test_fetch_labels_and_literals() -> None:
    out = render(PLAIN, "(BODY.PEEK[TEXT]<5.7> BODY[2.MIME] RFC822.SIZE)")
    assert out == (
        b"* 3 FETCH (BODY[TEXT]<5> {7}\r\n=20ther BODY[2.MIME] NIL "
        b"RFC822.SIZE %d)\r\n" % len(PLAIN)
    )


def test_uid_fetch_reports_uid_first() -> None:
    assert render(PLAIN, "FLAGS", uid=True) == b"* 3 FETCH (UID 7 FLAGS (\\Seen))\r\n"


def test_body_fetch_does_not_parse_or_copy() -> None:
    # BODY[] and RFC822 hand out the stored bytes themselves.
    request = parse_fetch_items(Cursor([b"(BODY[] RFC822)"]))
    data = MessageData(1, (), None, None, PLAIN)
    chunks = fetch.render(1, data, request, with_uid=False)
    assert any(isinstance(c, memoryview) and c.obj is PLAIN for c in chunks)
    assert any(c is PLAIN for c in chunks)


def test_lazy_content_not_loaded_for_index_items() -> None:
    def explode() -> bytes:
        raise AssertionError("content loaded")

    request = parse_fetch_items(Cursor([b"(UID FLAGS RFC822.SIZE INTERNALDATE)"]))
    assert not request.needs_content
    data = MessageData(1, (), None, 10, explode)
    out = b"".join(fetch.render(1, data, request, with_uid=False))
    assert out == (
        b"* 1 FETCH (UID 1 FLAGS () RFC822.SIZE 10 INTERNALDATE "
        b'"01-Jan-1970 00:00:00 +0000")\r\n'
    )


def test_macros() -> None:
    req: Request = parse_fetch_items(Cursor([b"FAST"]))
    assert req.items == ("FLAGS", "INTERNALDATE", "RFC822.SIZE")
    assert not req.needs_content
    req = parse_fetch_items(Cursor([b"full"]))
    assert req.items[-1] == "BODY" and req.needs_content and not req.sets_seen


HEAD = b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'


def test_multipart_without_close_delimiter_ends_at_end() -> None:
    msg = HEAD + b"--b\r\n\r\none\r\n--b\r\n\r\ntwo"
    tree = mime.parse(msg)
    assert [bytes(c.body) for c in tree.children] == [b"one", b"two"]


def test_boundary_prefix_is_not_a_delimiter() -> None:
    msg = HEAD + b"--b\r\n\r\n--bx\r\n--b--\r\n"
    tree = mime.parse(msg)
    assert [bytes(c.body) for c in tree.children] == [b"--bx"]


def test_nesting_is_bounded() -> None:
    head = b"Content-Type: message/rfc822\r\n\r\n"
    tree = mime.parse(head * 1000 + b"x")
    depth = 0
    while tree.message is not None:
        tree, depth = tree.message, depth + 1
    assert depth == mime.MAX_DEPTH


MIME_TOKENS = st.sampled_from(
    [b"\r\n", b"--b", b"--b--", b"Content-Type: multipart/mixed; boundary=b",
     b"Content-Type: message/rfc822", b"Content-Type: text/plain", b"From: ",
     b'"q\\"x"', b"<a@b>", b",", b":", b";", b"(c)", b"=?utf-8?q?x?=", b"x",
     b"\t", b" ", b"\xff", b"Content-Disposition: attachment; filename=\"a"]
)  # fmt: skip
ALL_ITEMS = (
    "(ENVELOPE BODYSTRUCTURE BODY BODY[1] BODY[1.MIME] BODY[2.1.HEADER] "
    "BODY[1.2.TEXT] BODY[HEADER.FIELDS (From)] RFC822.HEADER RFC822.TEXT)"
)


@settings(max_examples=400, deadline=None)
@given(st.lists(MIME_TOKENS, max_size=40))
def test_fuzz_structure_never_raises(tokens: list[bytes]) -> None:
    message = b"".join(tokens)
    request = parse_fetch_items(Cursor([ALL_ITEMS.encode()]))
    data = MessageData(1, (), None, None, message)
    out = b"".join(fetch.render(1, data, request, with_uid=True))
    assert out.startswith(b"* 1 FETCH (UID 1 ") and out.endswith(b")\r\n")


def test_rfc822_header_and_text() -> None:
    head, _, body = MIXED.partition(b"\r\n\r\n")
    out = render(MIXED, "(RFC822.HEADER RFC822.TEXT)")
    assert out == (
        b"* 3 FETCH (RFC822.HEADER {%d}\r\n%s\r\n\r\n RFC822.TEXT {%d}\r\n%s)\r\n"
        % (len(head) + 4, head, len(body), body)
    )


def test_binary_decodes_transfer_encoding() -> None:
    out = render(MIXED, "(BINARY.PEEK[2] BINARY.SIZE[2] BINARY.SIZE[1] BINARY[9])")
    assert out == (
        b"* 3 FETCH (BINARY[2] {5}\r\n%PDF- BINARY.SIZE[2] 5 BINARY.SIZE[1] 13 "
        b"BINARY[9] NIL)\r\n"
    )
    out = render(PLAIN, "BINARY[1]<6.11>")
    assert out == b"* 3 FETCH (BINARY[1]<6> {11}\r\nthere, caf\xc3)\r\n"


def test_binary_with_nul_is_literal8() -> None:
    message = (
        b"Content-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nAAEC\r\n"
    )
    assert render(message, "BINARY[1]") == b"* 3 FETCH (BINARY[1] ~{3}\r\n\0\1\2)\r\n"


def test_binary_of_unknown_encoding_fails() -> None:
    message = b"Content-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 a\r\n"
    with pytest.raises(sections.UnknownCte):
        render(message, "BINARY[1]")
    nested = (
        HEAD + b"--b\r\nContent-Type: multipart/alternative; boundary=c\r\n\r\n"
        b"--c\r\n\r\nx\r\n--c--\r\n--b--\r\n"
    )
    with pytest.raises(sections.UnknownCte):  # a multipart has no encoding
        render(nested, "BINARY[1]")
    assert render(nested, "BINARY.PEEK[1.1]") == b"* 3 FETCH (BINARY[1.1] {1}\r\nx)\r\n"


def test_a_repeated_fetch_argument_is_parsed_once() -> None:
    # The second parse is a lookup (fetchitems._parsed); it must leave
    # the cursor where a parse would, and never swallow what follows.
    first = parse_fetch_items(Cursor([b"(UID BODY.PEEK[1.MIME])"]))
    cur = Cursor([b"(UID BODY.PEEK[1.MIME])"])
    again = parse_fetch_items(cur)
    assert again is first
    assert cur.at_end()

    cur = Cursor([b"(UID BODY.PEEK[1.MIME]) extra"])
    assert parse_fetch_items(cur) == first
    assert not cur.at_end()


def test_a_fetch_argument_before_a_literal_is_not_looked_up() -> None:
    # Whatever the text piece holds, a literal after it is unparsed.
    text = b"(BODY.PEEK[HEADER.FIELDS (SUBJECT "
    cur = Cursor([text, Literal(b"X-A"), b")])"])
    request = parse_fetch_items(cur)
    assert request.items[0] == Section(
        spec="HEADER.FIELDS", fields=("SUBJECT", "X-A"), peek=True
    )
