"""The IMAP grammar pieces: modified UTF-7, the framer, the argument
readers, response rendering (checked with imaplib's own parsers where it
has one), and a table of whole commands, good and bad, fed to the core.
A hypothesis fuzz target closes: no input may raise out of the core."""

from __future__ import annotations

import datetime as dt
import imaplib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from imap_fakes import CoreDriver, lines_of

from postroom.protocol.imap import responses, utf7
from postroom.protocol.imap.framing import Command, Continue, Framer, Literal, Refused
from postroom.protocol.imap.syntax import (
    Cursor,
    ParseError,
    format_date_time,
    parse_date_time,
)

# -- modified UTF-7 (RFC 3501 §5.1.3) --------------------------------------

UTF7 = [
    ("INBOX", "INBOX"),
    ("Entwürfe", "Entw&APw-rfe"),
    ("A&B", "A&-B"),
    ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
    ("€", "&IKw-"),
    ("😀", "&2D3eAA-"),  # outside the BMP: a surrogate pair
    ("&", "&-"),
    ("", ""),
]


@pytest.mark.parametrize(("name", "wire"), UTF7)
def test_utf7(name: str, wire: str) -> None:
    assert utf7.encode(name) == wire
    assert utf7.decode(wire) == name


@pytest.mark.parametrize(
    "wire",
    [
        "&",  # unterminated
        "&AGE-",  # shifted printable ASCII ("a")
        "&AGEAYg-",  # ditto, two of them
        "&U,BTFw-&ZeVnLIqe-",  # two adjacent shifts: one encoder run
        "&APw",  # unterminated
        "&APx-",  # padding bits left over
        "&A/w-",  # "/" is not in the alphabet
        "caf\u00e9",  # raw 8-bit
        "a\tb",  # control character
        "&2D0-",  # lone surrogate
    ],
)
def test_utf7_refuses_non_canonical(wire: str) -> None:
    with pytest.raises(ValueError):
        utf7.decode(wire)


@given(st.text(max_size=30))
def test_utf7_round_trip(name: str) -> None:
    try:
        name.encode("utf-16-be")
    except UnicodeEncodeError:
        return  # lone surrogates cannot be named at all
    assert utf7.decode(utf7.encode(name)) == name


# -- framing -------------------------------------------------------------


def frames(data: bytes, **kw: int) -> list[object]:
    f = Framer(
        kw.get("max_line", 1000), kw.get("max_literal", 100), kw.get("max_command", 500)
    )
    f.buf += data
    out = []
    while (frame := f.next_frame()) is not None:
        out.append(frame)
    return out


def test_framing_literals() -> None:
    assert frames(b"a LOGIN {3}\r\nabc {2+}\r\nxy\r\n") == [
        Continue(),
        Command([b"a LOGIN ", Literal(b"abc"), b" ", Literal(b"xy"), b""]),
    ]
    assert frames(b"a APPEND x ~{2}\r\n\0\1\r\n")[1] == Command(
        [b"a APPEND x ", Literal(b"\0\1", binary=True), b""]
    )
    # A brace inside the line, or not at its end, is no literal.
    assert frames(b"a X {3} y\r\n") == [Command([b"a X {3} y"])]
    assert frames(b"a X {3\r\n") == [Command([b"a X {3"])]
    # Bare LF ends a line like CRLF.
    assert frames(b"a NOOP\nb NOOP\r\n") == [Command([b"a NOOP"]), Command([b"b NOOP"])]


def test_framing_bounds() -> None:
    assert frames(b"t1 X {101}\r\n") == [Refused("t1", "literal", True)]
    assert frames(b"t2 X {101+}\r\n" + b"z" * 101 + b" more\r\nt3 NOOP\r\n") == [
        Refused("t2", "literal"),
        Command([b"t3 NOOP"]),
    ]
    assert frames(b"t4 " + b"x" * 2000 + b"\r\nt5 NOOP\r\n", max_line=100) == [
        Refused("t4", "line"),
        Command([b"t5 NOOP"]),
    ]
    # Many small literals add up: the command as a whole is bounded.
    many = b"t6 X" + (b" {90+}\r\n" + b"z" * 90) * 10 + b"\r\n"
    assert frames(many + b"t7 NOOP\r\n") == [
        Refused("t6", "literal"),
        Command([b"t7 NOOP"]),
    ]
    endless = b"t8 X" + b" {0+}\r\n" * 100 + b"\r\n"
    assert frames(endless)[0] == Refused("t8", "literal")


# -- readers -------------------------------------------------------------


def test_quoted_and_astring() -> None:
    cur = Cursor([b'"a \\"b\\" \\\\c" atom] NIL ""'])
    assert cur.astring() == b'a "b" \\c'
    cur.sp()
    assert cur.astring() == b"atom]"
    cur.sp()
    assert cur.nstring() is None
    cur.sp()
    assert cur.astring() == b""
    assert cur.at_end()


@pytest.mark.parametrize(
    "text", ['"unterminated', '"bad \\x escape"', "", "(paren", "{5}"]
)
def test_astring_errors(text: str) -> None:
    with pytest.raises(ParseError):
        Cursor([text.encode()]).astring()


def test_date_time_round_trip() -> None:
    when = parse_date_time(" 5-Mar-2024 10:20:30 -0130")
    assert when == dt.datetime(
        2024, 3, 5, 10, 20, 30, tzinfo=dt.timezone(-dt.timedelta(hours=1, minutes=30))
    )
    assert format_date_time(when) == "05-Mar-2024 10:20:30 -0130"
    # imaplib reads our form back to the same instant.
    parsed = imaplib.Internaldate2tuple(
        b'1 (INTERNALDATE "' + format_date_time(when).encode() + b'")'
    )
    assert parsed is not None
    assert dt.datetime(*parsed[:6]) == when.astimezone().replace(tzinfo=None)


# -- rendering -----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (b"plain", b'"plain"'),
        (b"", b'""'),
        (b'a "q" \\', b'"a \\"q\\" \\\\"'),
        (b"line\r\nbreak", b"{11}\r\nline\r\nbreak"),
        (b"caf\xc3\xa9", b"{5}\r\ncaf\xc3\xa9"),
        (b"nul\0", b"{4}\r\nnul\0"),
    ],
)
def test_string(value: bytes, wire: bytes) -> None:
    assert responses.string(value) == wire


def test_string_utf8_when_enabled() -> None:
    assert responses.string(b"caf\xc3\xa9", utf8=True) == b'"caf\xc3\xa9"'
    assert responses.string(b"\xff", utf8=True) == b"{1}\r\n\xff"


def test_mailbox_and_astring() -> None:
    assert responses.mailbox("inbox") == b"INBOX"
    assert responses.mailbox("Entwürfe") == b"Entw&APw-rfe"
    assert responses.mailbox("two words") == b'"two words"'
    assert responses.astring(b"NIL") == b'"NIL"'


def test_flag_list_parses_with_imaplib() -> None:
    flags = ("\\Seen", "\\Deleted", "$Junk")
    line = b"* 1 FETCH (FLAGS " + responses.flag_list(flags) + b")"
    assert imaplib.ParseFlags(line) == tuple(f.encode() for f in flags)


@pytest.mark.parametrize(
    ("uids", "text"),
    [([1, 2, 3, 7], "1:3,7"), ([5], "5"), ([], ""), ([3, 1, 2], "3,1:2")],
)
def test_uid_set(uids: list[int], text: str) -> None:
    assert responses.uid_set(uids) == text


# -- whole commands: never an exception, always the right answer ---------

# (command after login and SELECT of a 3-message INBOX, first line of answer)
COMMANDS = [
    ("FETCH 1 (UID)", "* 1 FETCH (UID 1)"),
    ("fetch 1 uid", "* 1 FETCH (UID 1)"),
    ("FETCH 1,3 FLAGS", "* 1 FETCH (FLAGS ())"),
    ("FETCH 3:1 UID", "* 1 FETCH (UID 1)"),
    ("FETCH 0 UID", "t BAD Bad sequence set"),
    ("FETCH 4 UID", "t BAD Invalid message sequence number"),
    ("FETCH 01 UID", "t BAD Bad sequence set"),
    ("FETCH 1 (UID", "t BAD Expected a space"),
    ("FETCH 1 BODY[", "t BAD Bad section specifier"),
    ("FETCH 1 BODY[]<1>", "t BAD Expected '.'"),
    ("FETCH 1 BODY[]<0.0>", "t BAD Expected a non-zero number"),
    ("FETCH 1 BODY[0]", "t BAD Expected a non-zero number"),
    ("FETCH 1 BODY[MIME]", "t BAD Bad section specifier"),
    ("FETCH 1 BODY[HEADER.FIELDS ()]", "t BAD Empty header field list"),
    ("FETCH 1 BODY[HEADER.FIELDS]", "t BAD Expected a space"),
    ("FETCH 1 RFC822.PEEK", "t BAD Unknown fetch item RFC822.PEEK"),
    ("FETCH 1 ()", "t BAD Empty fetch list"),
    ("FETCH 1", "t BAD Expected a space"),
    ("FETCH", "t BAD Expected a space"),
    ("FETCH 1 UID extra", "t BAD Unexpected extra arguments"),
    ("FETCH 99999999999 UID", "t BAD Bad sequence set"),
    ("STORE 1 FLAGS \\Seen", "* 1 FETCH (FLAGS (\\Seen))"),
    ("STORE 1 +FLAGS.SILENT (\\Seen)", "t OK STORE completed"),
    ("STORE 1 -FLAGS ()", "* 1 FETCH (FLAGS ())"),
    ("STORE 1 ++FLAGS (x)", "t BAD Expected FLAGS, +FLAGS or -FLAGS"),
    ("STORE 1 LABELS (x)", "t BAD Expected FLAGS, +FLAGS or -FLAGS"),
    ("STORE 1 FLAGS (\\Seen", "t BAD Expected a space"),
    ("UID STORE 2 +FLAGS (\\Answered)", "* 2 FETCH (UID 2 FLAGS (\\Answered))"),
    ("COPY 1 INBOX", "t OK [COPYUID 1001 1 4] COPY completed"),
    ("COPY 1", "t BAD Expected a space"),
    ("SEARCH", "t BAD Expected a space"),
    ("SEARCH ()", "t BAD Expected a search key"),
    ("SEARCH UID 2:*", "* SEARCH 2 3"),
    ("UID SEARCH 2:*", "* SEARCH 2 3"),
    ("UID FETCH * UID", "* 3 FETCH (UID 3)"),
    ("UID EXPUNGE", "t BAD Expected a space"),
    ("UID", "t BAD Unknown UID command"),
    ("LIST", "t BAD Expected a space"),
    ('LIST "" "*" RETURN (BOGUS)', "t BAD Unknown LIST return option BOGUS"),
    ('LIST (BOGUS) "" *', "t BAD Unknown LIST selection option BOGUS"),
    (
        'LIST (RECURSIVEMATCH) "" *',
        "t BAD RECURSIVEMATCH needs another selection option",
    ),
    ("STATUS INBOX ()", "t BAD Bad STATUS item list"),
    ("APPEND INBOX", "t BAD Expected a space"),
    ('APPEND INBOX "bad date" {1+}\r\nx', "t BAD Bad date-time"),
    ("APPEND INBOX (\\Recent) {1+}\r\nx", "t BAD \\Recent cannot be set by a client"),
    ("CREATE a/../b", "t NO [CANNOT] Invalid mailbox name"),
    ("CREATE /abs", "t NO [CANNOT] Invalid mailbox name"),
    ('CREATE "a\\\\b"', "t OK CREATE completed"),
    ("CREATE {3+}\r\na\0b", "t BAD Mailbox name is not valid modified UTF-7"),
    ("RENAME a", "t BAD Expected a space"),
    ("ENABLE", "t BAD Not valid while a mailbox is selected"),
    ('ID ("a")', "t BAD Expected a space"),
    ("ID BOGUS", "t BAD Expected '('"),
    ("NAMESPACE x", "t BAD Unexpected extra arguments"),
    ("CHECK", "t OK CHECK completed"),
    ("t2 NOOP", "t BAD Unknown command"),
]


@pytest.mark.parametrize(("command", "first"), COMMANDS)
def test_command_table(command: str, first: str) -> None:
    d = CoreDriver(store=None)
    box = d.store.mailboxes["INBOX"]
    for _ in range(3):
        box.add(b"Subject: x\r\n\r\nbody\r\n")
    d.send(b"a LOGIN alice secret\r\nb SELECT INBOX\r\n")
    out = lines_of(d.send(b"t " + command.encode() + b"\r\n"))
    assert out[0] == first


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=8))
def test_fuzz_never_raises(chunks: list[bytes]) -> None:
    d = CoreDriver()
    d.send(b"a LOGIN alice secret\r\nb SELECT INBOX\r\n")
    for chunk in chunks:
        d.send(chunk)
    d.send(b"\r\nz NOOP\r\n")


GRAMMAR = st.sampled_from(
    [b"FETCH", b"UID", b"SEARCH", b"STORE", b"1:*", b"(", b")", b"BODY[",
     b"]", b'"', b"{3}\r\n", b"{2+}\r\n", b"\\Seen", b" ", b"NOT", b"OR",
     b"HEADER.FIELDS", b"<0.1>", b"*", b"\r\n", b"t ", b"LIST", b"%",
     b"APPEND", b"~{1}\r\n", b"IDLE", b"DONE", b"&-", b"&AGE-"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(GRAMMAR, max_size=30))
def test_fuzz_grammar_tokens(tokens: list[bytes]) -> None:
    d = CoreDriver()
    d.send(b"a LOGIN alice secret\r\nb SELECT INBOX\r\n")
    d.send(b"".join(tokens) + b"\r\nDONE\r\n")
    d.eof()
