"""The argument grammar: paths, addresses, parameters, xtext.

Tables first, then properties (hypothesis): the parsers either return a
value or raise ``SyntaxProblem`` with a 5xx reply, never anything else.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postroom.protocol.smtp.replies import Reply
from postroom.protocol.smtp.syntax import (
    NULL_ADDRESS,
    Address,
    SyntaxProblem,
    decode_xtext,
    encode_xtext,
    has_non_ascii,
    parse_parameters,
    parse_path,
    to_ascii_domain,
)

BAD = Reply.of(501, "5.1.3", "Bad recipient address syntax")


def path(text: str, null_ok: bool = False) -> tuple[Address, str]:
    return parse_path(text, null_ok=null_ok, bad=BAD)


# -- paths ------------------------------------------------------------------

PATHS = [
    # (text, local, domain, ascii_domain, rest)
    ("<bob@example.net>", "bob", "example.net", "example.net", ""),
    ("<bob@Example.NET>", "bob", "example.net", "example.net", ""),
    ("<Bob@example.net>", "Bob", "example.net", "example.net", ""),
    ("<bob@example.net.>", "bob", "example.net", "example.net", ""),
    (" <bob@example.net>", "bob", "example.net", "example.net", ""),
    ("bob@example.net", "bob", "example.net", "example.net", ""),
    ("bob@example.net SIZE=1", "bob", "example.net", "example.net", "SIZE=1"),
    (
        "<bob@example.net>  SIZE=1 BODY=7BIT ",
        "bob",
        "example.net",
        "example.net",
        "SIZE=1 BODY=7BIT",
    ),
    ("<b.o.b+tag@example.net>", "b.o.b+tag", "example.net", "example.net", ""),
    (
        "<!#$%&'*+/=?^_`{|}~-@x.example>",
        "!#$%&'*+/=?^_`{|}~-",
        "x.example",
        "x.example",
        "",
    ),
    ("<bob%relay@example.net>", "bob%relay", "example.net", "example.net", ""),
    ('<"bob smith"@example.net>', '"bob smith"', "example.net", "example.net", ""),
    ('<"a>b"@example.net>', '"a>b"', "example.net", "example.net", ""),
    ('<"a@b"@example.net>', '"a@b"', "example.net", "example.net", ""),
    ('<"a\\"b"@example.net>', '"a\\"b"', "example.net", "example.net", ""),
    ("<@hop.example:bob@example.net>", "bob", "example.net", "example.net", ""),
    (
        "<@a.example,@b.example:bob@example.net>",
        "bob",
        "example.net",
        "example.net",
        "",
    ),
    ("<postmaster>", "postmaster", "", "", ""),
    ("<POSTMASTER>", "POSTMASTER", "", "", ""),
    ("<bob@[192.0.2.1]>", "bob", "[192.0.2.1]", "[192.0.2.1]", ""),
    ("<bob@[IPv6:2001:db8::1]>", "bob", "[IPv6:2001:db8::1]", "[IPv6:2001:db8::1]", ""),
    (
        "<bob@[ipv6:2001:DB8:0:0:0:0:0:1]>",
        "bob",
        "[IPv6:2001:db8::1]",
        "[IPv6:2001:db8::1]",
        "",
    ),
    (
        "<jürgen@bücher.example>",
        "jürgen",
        "bücher.example",
        "xn--bcher-kva.example",
        "",
    ),
    ("<bob@BÜCHER.example>", "bob", "bücher.example", "xn--bcher-kva.example", ""),
    ("<用户@例子.广告>", "用户", "例子.广告", "xn--fsqu00a.xn--4rr70v", ""),
    ("<" + "b" * 64 + "@example.net>", "b" * 64, "example.net", "example.net", ""),
]


@pytest.mark.parametrize(
    "text, local, domain, ascii_domain, rest", PATHS, ids=[p[0][:40] for p in PATHS]
)
def test_parse_path(
    text: str, local: str, domain: str, ascii_domain: str, rest: str
) -> None:
    assert path(text) == (Address(local, domain, ascii_domain), rest)


BAD_PATHS = [
    "",
    "<>",
    "<",
    "<bob@example.net",
    "bob@example.net>",
    "<bob>",
    "<bob@>",
    "<@example.net>",
    "<bob@example.net>SIZE=1",
    "<bob@a@example.net>",
    "<bob@@example.net>",
    "<bob.@example.net>",
    "<.bob@example.net>",
    "<bo..b@example.net>",
    "<bob@example..net>",
    "<bob@.example.net>",
    "<bob@-example.net>",
    "<bob@example-.net>",
    "<bob@exa_mple.net>",
    "<bob smith@example.net>",
    '<"bob@example.net>',
    '<"bob"x@example.net>',
    "<@hop.example bob@example.net>",
    "<@hop.example:>",
    "<hop.example:bob@example.net>",
    "<@:bob@example.net>",
    "<bob@[192.0.2.256]>",
    "<bob@[IPv6:1::2::3]>",
    "<bob@[x400:whatever]>",
    "<bob@[192.0.2.1>",
    "<" + "b" * 65 + "@example.net>",
    "<bob@" + "a" * 250 + ".net>",
    "<bob@xn--ls8h.example" + ".x" * 130 + ">",
]


@pytest.mark.parametrize("text", BAD_PATHS, ids=[p[:40] or "empty" for p in BAD_PATHS])
def test_parse_path_refuses(text: str) -> None:
    with pytest.raises(SyntaxProblem) as e:
        path(text)

    assert e.value.reply.code == 501
    assert e.value.reply.enhanced == BAD.enhanced


def test_null_path_only_where_allowed() -> None:
    assert path("<>", null_ok=True) == (NULL_ADDRESS, "")
    assert path("<> SIZE=10", null_ok=True) == (NULL_ADDRESS, "SIZE=10")
    assert NULL_ADDRESS.is_null and str(NULL_ADDRESS) == ""


@pytest.mark.parametrize(
    "domain", ["bad\u0080label.example", "x" * 64 + "é.example", "a\u200db.example"]
)
def test_invalid_idna_domain_is_a_501(domain: str) -> None:
    with pytest.raises(SyntaxProblem) as e:
        to_ascii_domain(domain, BAD)

    assert e.value.reply.code == 501


@pytest.mark.parametrize("text", ["<bob@example.net..>", "<bob@example.net...>"])
def test_more_than_one_trailing_dot_is_refused(text: str) -> None:
    with pytest.raises(SyntaxProblem):
        path(text)


# -- addresses ------------------------------------------------------------------


@pytest.mark.parametrize(
    "address, text, unquoted",
    [
        (Address("bob", "example.net", "example.net"), "bob@example.net", "bob"),
        (Address("postmaster", "", ""), "postmaster", "postmaster"),
        (Address('"a b"', "x.example", "x.example"), '"a b"@x.example', "a b"),
        (
            Address('"a\\"b\\\\"', "x.example", "x.example"),
            '"a\\"b\\\\"@x.example',
            'a"b\\',
        ),
    ],
)
def test_address_forms(address: Address, text: str, unquoted: str) -> None:
    assert str(address) == text
    assert address.unquoted_local == unquoted
    assert not address.is_null


@pytest.mark.parametrize(
    "address, expected",
    [
        (Address("bob", "example.net", "example.net"), False),
        (Address("jürgen", "example.net", "example.net"), True),
        (Address("bob", "bücher.example", "xn--bcher-kva.example"), True),
        (NULL_ADDRESS, False),
    ],
)
def test_has_non_ascii(address: Address, expected: bool) -> None:
    assert has_non_ascii(address) is expected


# -- parameters ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text, params",
    [
        ("", {}),
        ("  ", {}),
        ("SIZE=10", {"SIZE": "10"}),
        ("size=10 body=8BITMIME", {"SIZE": "10", "BODY": "8BITMIME"}),
        ("SMTPUTF8", {"SMTPUTF8": None}),
        ("SIZE=1  SMTPUTF8 ", {"SIZE": "1", "SMTPUTF8": None}),
        ("AUTH=<>", {"AUTH": "<>"}),
        ("ENVID=é", {"ENVID": "é"}),
        ("ORCPT=rfc822;a+40b", {"ORCPT": "rfc822;a+40b"}),
    ],
)
def test_parse_parameters(text: str, params: dict[str, str | None]) -> None:
    assert parse_parameters(text) == params


@pytest.mark.parametrize(
    "text",
    [
        "=x",
        "-SIZE=1",
        "SI_ZE=1",
        "SIZE=",
        "SIZE=a\x7fb",
        "A=1 A=2",
        "a=1 A=1",
        "X=\x01",
        "X-A=b=c",
    ],
)
def test_parse_parameters_refuses(text: str) -> None:
    with pytest.raises(SyntaxProblem) as e:
        parse_parameters(text)

    assert (e.value.reply.code, e.value.reply.enhanced) == (501, "5.5.4")


# -- xtext (RFC 3461 §4) ------------------------------------------------------


@pytest.mark.parametrize(
    "text, decoded",
    [
        ("", ""),
        ("plain", "plain"),
        ("a+2Bb", "a+b"),
        ("a+3Db", "a=b"),
        ("+20+7E", " ~"),
        ("rfc822+3Bbob+40example.net", "rfc822;bob@example.net"),
    ],
)
def test_decode_xtext(text: str, decoded: str) -> None:
    assert decode_xtext(text) == decoded


@pytest.mark.parametrize("text", ["+", "+2", "+2b", "+GG", "a=b", "a b", "\x01"])
def test_decode_xtext_refuses(text: str) -> None:
    with pytest.raises(SyntaxProblem):
        decode_xtext(text)


@pytest.mark.parametrize(
    "text, encoded",
    [("a+b=c", "a+2Bb+3Dc"), ("a b", "a+20b"), ("é", "+C3+A9"), ("~!", "~!")],
)
def test_encode_xtext(text: str, encoded: str) -> None:
    assert encode_xtext(text) == encoded


@given(st.text(alphabet=st.characters(max_codepoint=0x7F)))
def test_xtext_round_trip_ascii(text: str) -> None:
    assert decode_xtext(encode_xtext(text)) == text


def test_xtext_round_trip_utf8() -> None:
    for text in ["é", "jürgen@bücher.example", "用户"]:
        assert decode_xtext(encode_xtext(text)) == text


# -- properties ---------------------------------------------------------------

# Text built from the characters that matter to the grammar, so that
# hypothesis reaches deep into it instead of failing at the first byte.
GRAMMAR = st.text(
    alphabet=st.sampled_from(list('<>@"\\.:,[]- +=;abcAB09éü用\x00\x7f\u200d')),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(GRAMMAR, st.booleans())
def test_parse_path_raises_only_syntax_problems(text: str, null_ok: bool) -> None:
    try:
        address, rest = path(text, null_ok)
    except SyntaxProblem as e:
        assert e.reply.code == 501
        return
    # Whatever is accepted is a well-formed value.
    assert address.ascii_domain.isascii()
    assert address.domain == address.domain.lower()
    assert rest == rest.strip(" ")


@settings(max_examples=300, deadline=None)
@given(GRAMMAR)
def test_parse_parameters_raises_only_syntax_problems(text: str) -> None:
    try:
        params = parse_parameters(text)
    except SyntaxProblem as e:
        assert e.reply.code == 501
        return
    assert all(key == key.upper() for key in params)


@settings(max_examples=300, deadline=None)
@given(GRAMMAR)
def test_decode_xtext_raises_only_syntax_problems(text: str) -> None:
    try:
        decode_xtext(text)
    except SyntaxProblem as e:
        assert e.reply.code == 501
