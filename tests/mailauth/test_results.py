"""The Authentication-Results field: words from the message or the
sender's DNS must never end a comment early or start a new field."""

from __future__ import annotations

from postroom.mailauth import results
from postroom.mailauth.results import DkimResult, DmarcResult, SpfResult, Verdict


def test_comments_cannot_break_out() -> None:
    hostile = 'bad (x) dkim=pass\r\nX-Evil: 1 \\ "'
    verdict = Verdict(
        SpfResult("permerror", "mailfrom", "evil.test", hostile),
        (DkimResult("neutral", "evil.test", "s", "", hostile),),
        DmarcResult("none", "evil.test", reason=hostile),
    )

    field = results.header("mx.postroom.test", verdict)

    lines = field.split(b"\r\n")
    assert lines[-1] == b""
    assert all(line.startswith(b"\t") for line in lines[1:-1])
    assert b"X-Evil" not in field.split(b"\r\n\t")[0]
    for line in lines[1:-1]:
        # One comment per clause, opened and closed once.
        assert line.count(b"(") == line.count(b")") == 1


def test_values_are_quoted_when_they_are_not_tokens() -> None:
    verdict = Verdict(
        SpfResult("none", "helo", "[192.0.2.1]"),
        (),
        DmarcResult("none"),
    )

    field = results.header("mx.postroom.test", verdict)

    assert b'smtp.helo="[192.0.2.1]"' in field
    assert b"\tdkim=none;" in field
    assert field.endswith(b"\tdmarc=none\r\n")


def test_values_cannot_start_a_field() -> None:
    # A d= tag holding a bare CR arrives with BODY=BINARYMIME; authres
    # quotes the value but keeps the CR, and readers that split lines
    # at CR (Python's email) would see a forged field under our name.
    forged = "evil.test\rAuthentication-Results: mx.postroom.test; dkim=pass"
    verdict = Verdict(
        SpfResult("none", "helo", "helo.test\x0bX"),
        (DkimResult("neutral", forged, "s\n1", "abc\x00"),),
        DmarcResult("none", "from.test\r\nX-Evil: 1"),
    )

    field = results.header("mx.postroom.test", verdict)

    body = field.replace(b"\r\n\t", b"")[:-2]
    assert not any(c < 0x20 or c == 0x7F for c in body)
    assert b'header.d="evil.testAuthentication-Results:' in field
