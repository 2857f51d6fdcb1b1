"""to_7bit: 8-bit content made fit for a server without 8BITMIME.

Every converted result is read back with the stdlib email parser and
compared part by part with what went in, and checked for the two
properties a 7-bit server needs: no octet above 127, no line over 998.
"""

from __future__ import annotations

import email
import email.policy
import quopri
from email.message import Message

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postroom.delivery.downgrade import MAX_DEPTH, to_7bit

CRLF = b"\r\n"


def msg(*lines: bytes) -> bytes:
    return CRLF.join(lines)


def parse(content: bytes) -> Message:
    return email.message_from_bytes(content, policy=email.policy.compat32)


def subparts(message: Message) -> list[Message]:
    payload = message.get_payload()
    assert isinstance(payload, list)
    return [part for part in payload if isinstance(part, Message)]


def assert_7bit(content: bytes) -> None:
    assert content.isascii()
    assert b"\0" not in content
    lines = content.split(CRLF)
    assert max(map(len, lines)) <= 998
    # CRLF preserved: no CR or LF on its own.
    assert content.count(b"\r") == content.count(b"\n") == len(lines) - 1


def converted(content: bytes) -> bytes:
    out = to_7bit(content)
    assert out is not None
    assert_7bit(out)
    return out


# -- nothing to do ------------------------------------------------------


def test_already_7bit_returns_the_same_object() -> None:
    content = msg(b"From: a@example.test", b"Subject: hi", b"", b"plain", b"")
    assert to_7bit(content) is content


def test_7bit_multipart_returns_the_same_object() -> None:
    content = msg(
        b"Content-Type: multipart/mixed; boundary=b",
        b"",
        b"--b",
        b"",
        b"one",
        b"--b--",
        b"",
    )
    assert to_7bit(content) is content


# -- single-part text -----------------------------------------------------


@pytest.mark.parametrize(
    ("charset", "text"),
    [
        ("iso-8859-1", "Grüße aus Köln, ça va?"),
        ("utf-8", "Grüße aus Köln — ça va? 日本語"),
    ],
)
def test_8bit_text_becomes_quoted_printable(charset: str, text: str) -> None:
    body = f"{text}\r\nsecond line\r\n".encode(charset)
    content = (
        msg(
            b"From: a@example.test",
            b"MIME-Version: 1.0",
            f"Content-Type: text/plain; charset={charset}".encode(),
            b"Content-Transfer-Encoding: 8bit",
            b"",
            b"",
        )
        + body
    )
    out = converted(content)

    parsed = parse(out)
    assert parsed["Content-Transfer-Encoding"] == "quoted-printable"
    assert parsed.get_payload(decode=True) == body
    assert parsed.get_content_charset() == charset
    # The header section is untouched but for the one field.
    head = out.partition(b"\r\n\r\n")[0]
    old_cte = b"Content-Transfer-Encoding: 8bit"
    new_cte = b"Content-Transfer-Encoding: quoted-printable"
    assert head == content.partition(b"\r\n\r\n")[0].replace(old_cte, new_cte)


def test_missing_cte_and_charset_on_a_plain_message() -> None:
    # Not MIME at all: the conversion makes it MIME, and names UTF-8
    # since the body decodes as such.
    body = "naïve café\r\n".encode()
    content = msg(b"From: a@example.test", b"Subject: x", b"", b"") + body
    parsed = parse(converted(content))
    assert parsed["MIME-Version"] == "1.0"
    assert parsed["Content-Transfer-Encoding"] == "quoted-printable"
    assert parsed.get_content_charset() == "utf-8"
    assert parsed.get_payload(decode=True) == body


def test_text_without_charset_that_is_not_utf8() -> None:
    content = msg(b"Content-Type: text/plain", b"", b"caf\xe9", b"")
    parsed = parse(converted(content))
    assert parsed.get_content_charset() == "unknown-8bit"
    assert parsed.get_payload(decode=True) == b"caf\xe9\r\n"


def test_long_ascii_line_is_encoded_too() -> None:
    line = b"x" * 2000
    content = msg(b"Content-Type: text/plain", b"", line, b"")
    parsed = parse(converted(content))
    assert parsed.get_payload(decode=True) == line + CRLF


def test_8bit_attachment_becomes_base64() -> None:
    data = bytes(range(1, 256)).replace(b"\r", b"").replace(b"\n", b"")
    content = msg(
        b"Content-Type: application/octet-stream",
        b"Content-Transfer-Encoding: binary",
        b"",
        data,
    )
    parsed = parse(converted(content))
    assert parsed["Content-Transfer-Encoding"] == "base64"
    assert parsed.get_payload(decode=True) == data


# -- multipart --------------------------------------------------------------


MIXED = msg(
    b"From: a@example.test",
    b"To:   b@example.test",
    b"MIME-Version: 1.0",
    b'Content-Type: multipart/mixed; boundary="XyZ"',
    b"",
    b"This is a MIME message.",
    b"--XyZ",
    b"Content-Type: text/plain; charset=us-ascii",
    b"",
    b"plain ascii part",
    b"--XyZ  ",
    b"Content-Type: text/plain; charset=utf-8",
    b"Content-Transfer-Encoding: 8bit",
    b"",
    "größer als".encode(),
    b"--XyZ",
    b"Content-Type: application/pdf",
    b"Content-Transfer-Encoding: base64",
    b"",
    b"JVBERi0xLjQK",
    b"--XyZ--",
    b"epilogue",
    b"",
)


def test_multipart_with_one_8bit_part() -> None:
    out = converted(MIXED)
    parsed = parse(out)
    parts = subparts(parsed)
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "text/plain",
        "application/pdf",
    ]
    assert parts[1]["Content-Transfer-Encoding"] == "quoted-printable"
    assert parts[1].get_payload(decode=True) == "größer als".encode()

    # Everything around the converted part is byte-identical, padding
    # after the boundary and spacing in the To field included.
    before, _, rest = MIXED.partition(b"Content-Transfer-Encoding: 8bit\r\n")
    after = rest.partition(b"\r\n--XyZ\r\nContent-Type: application/pdf")[2]
    assert out.startswith(before)
    assert out.endswith(after)
    assert b"--XyZ  \r\n" in out


def test_8bit_in_preamble_is_impossible() -> None:
    content = MIXED.replace(b"This is a MIME message.", "Voilà".encode())
    assert to_7bit(content) is None


def test_8bit_in_epilogue_is_impossible() -> None:
    content = MIXED.replace(b"epilogue", "épilogue".encode())
    assert to_7bit(content) is None


def test_8bit_multipart_without_boundary_is_impossible() -> None:
    content = msg(b"Content-Type: multipart/mixed", b"", "é".encode(), b"")
    assert to_7bit(content) is None


def test_multipart_without_close_delimiter() -> None:
    content = msg(
        b"Content-Type: multipart/mixed; boundary=b",
        b"",
        b"--b",
        b"",
        b"caf\xc3\xa9",
        b"",
    )
    # (The email parser drops the last CRLF of an unclosed part, so the
    # bytes are checked here.)
    assert converted(content).endswith(
        b"--b\r\nContent-Transfer-Encoding: quoted-printable\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\ncaf=C3=A9\r\n"
    )


def test_line_that_merely_starts_with_the_boundary_is_content() -> None:
    content = msg(
        b"Content-Type: multipart/mixed; boundary=b",
        b"",
        b"--b",
        b"",
        b"--bogus caf\xc3\xa9",
        b"--b--",
        b"",
    )
    parts = subparts(parse(converted(content)))
    assert len(parts) == 1
    assert parts[0].get_payload(decode=True) == b"--bogus caf\xc3\xa9"


# -- headers and message/* --------------------------------------------------


def test_8bit_header_is_impossible() -> None:
    content = msg("Subject: Grüße".encode(), b"", b"body", b"")
    assert to_7bit(content) is None


def test_8bit_header_in_a_part_is_impossible() -> None:
    content = MIXED.replace(
        b"Content-Type: application/pdf",
        b'Content-Type: application/pdf; name="\xc3\xa9.pdf"',
    )
    assert to_7bit(content) is None


def _forward(inner: bytes) -> bytes:
    return msg(
        b"From: a@example.test",
        b"MIME-Version: 1.0",
        b"Content-Type: multipart/mixed; boundary=outer",
        b"",
        b"--outer",
        b"Content-Type: text/plain",
        b"",
        b"See below.",
        b"--outer",
        b"Content-Type: message/rfc822",
        b"Content-Transfer-Encoding: 8bit",
        b"",
        inner,
        b"--outer--",
        b"",
    )


def test_nested_message_with_an_8bit_body() -> None:
    inner = msg(
        b"From: c@example.test",
        b"Subject: inner",
        b"Content-Type: text/plain; charset=utf-8",
        b"",
        "dépêche".encode(),
    )
    out = converted(_forward(inner))
    parsed = parse(out)
    attached = subparts(parsed)[1]
    # The container keeps its type and is relabelled 7bit (RFC 2046
    # §5.2.1 allows no other encoding for it)...
    assert attached.get_content_type() == "message/rfc822"
    assert attached["Content-Transfer-Encoding"] == "7bit"
    # ...and the message inside is converted.
    inner_msg = subparts(attached)[0]
    assert inner_msg["Subject"] == "inner"
    assert inner_msg["Content-Transfer-Encoding"] == "quoted-printable"
    assert inner_msg.get_payload(decode=True) == "dépêche".encode()


def test_nested_message_with_an_8bit_header_is_impossible() -> None:
    inner = msg("Subject: dépêche".encode(), b"", b"body")
    assert to_7bit(_forward(inner)) is None


def test_8bit_delivery_status_is_impossible() -> None:
    content = msg(
        b"Content-Type: message/delivery-status",
        b"",
        "Final-Recipient: rfc822; é@example.test".encode(),
        b"",
    )
    assert to_7bit(content) is None


def test_message_global_may_be_encoded() -> None:
    inner = "Subject: dépêche\r\n\r\nbody\r\n".encode()
    content = msg(b"Content-Type: message/global", b"", b"") + inner
    head, _, body = converted(content).partition(b"\r\n\r\n")
    assert b"Content-Transfer-Encoding: quoted-printable" in head
    # The email package parses message/* bodies as messages, so it
    # cannot hand back the encoded octets; quopri can.
    assert quopri.decodestring(body) == inner


# -- what cannot be converted -------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b"Content-Type: application/octet-stream\r\n\r\n\xff\n\xfe",
        b"Content-Type: text/plain\r\n\r\nbare\rcr\r\n\xe9",
        b"Subject: x\r\n\r\nascii but bare\nLF\r\n",
    ],
)
def test_binary_content_with_bare_newlines_is_impossible(content: bytes) -> None:
    assert to_7bit(content) is None


def test_deep_nesting_is_impossible() -> None:
    content = "é".encode()
    for _ in range(MAX_DEPTH + 2):
        content = msg(b"Content-Type: message/rfc822", b"", content)
    assert to_7bit(content) is None


def test_broken_quoted_printable_with_8bit_is_repaired() -> None:
    content = msg(
        b"Content-Type: text/plain; charset=iso-8859-1",
        b"Content-Transfer-Encoding: quoted-printable",
        b"",
        b"caf=E9 and raw caf\xe9",
        b"",
    )
    parsed = parse(converted(content))
    assert parsed.get_payload(decode=True) == b"caf\xe9 and raw caf\xe9\r\n"


# -- properties ---------------------------------------------------------------

# Any octets but CR and LF, in lines joined with CRLF: what a client may
# send with BODY=8BITMIME (and more: NUL and overlong lines too).
_LINES = st.lists(st.binary(max_size=1200).map(lambda b: b.translate(None, b"\r\n")))


@given(lines=_LINES, text=st.booleans())
def test_any_body_round_trips(lines: list[bytes], text: bool) -> None:
    body = CRLF.join(lines)
    ctype = b"text/plain; charset=x-user-defined" if text else b"image/png"
    content = msg(b"Content-Type: " + ctype, b"", body)
    out = to_7bit(content)
    assert out is not None
    assert_7bit(out)
    if out is content:
        return
    # Read the result back the way a receiving MUA would.
    assert parse(out).get_payload(decode=True) == body
