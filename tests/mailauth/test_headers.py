"""The author domain, and removing Authentication-Results fields that
claim our authserv-id (RFC 8601 §5)."""

from __future__ import annotations

import pytest

from postroom.mailauth import headers

OURS = "mx.postroom.test"


def test_from_domain() -> None:
    content = (
        b"From: Alice <Alice@Example.TEST>\r\nTo: b@c.test\r\n\r\nFrom: x@body.test\r\n"
    )

    assert headers.from_domains(content) == ["example.test"]


def test_folded_from_with_two_authors() -> None:
    content = b"From: a@one.test,\r\n b@two.test\r\nSubject: x\r\n\r\nbody\r\n"

    assert headers.from_domains(content) == ["one.test", "two.test"]


def test_no_from() -> None:
    assert headers.from_domains(b"Subject: x\r\n\r\nbody\r\n") == []


def test_an_internationalized_author_domain_becomes_an_a_label() -> None:
    content = "From: a@bücher.test\r\n\r\n".encode()

    assert headers.from_domains(content) == ["xn--bcher-kva.test"]


@pytest.mark.parametrize(
    "field",
    [
        b"Authentication-Results: mx.postroom.test; dkim=pass\r\n",
        b"authentication-results:MX.Postroom.Test;spf=pass\r\n",
        b"Authentication-Results: (trust me) mx.postroom.test (really);\r\n"
        b"\tdkim=pass header.d=bank.test\r\n",
        b'Authentication-Results: "mx.postroom.test"; dmarc=pass\r\n',
        b"Authentication-Results:\r\n mx.postroom.test 1; none\r\n",
    ],
)
def test_claims_of_our_id_are_removed(field: bytes) -> None:
    content = b"Received: from x\r\n" + field + b"Subject: hi\r\n\r\nbody\r\n"

    cleaned, removed = headers.remove_claims(content, OURS)

    assert removed == 1
    assert cleaned == b"Received: from x\r\nSubject: hi\r\n\r\nbody\r\n"


def test_other_hosts_claims_and_the_body_stay() -> None:
    content = (
        b"Authentication-Results: mx.other.test; dkim=pass\r\n"
        b"Authentication-Results: mx.postroom.test.evil.test; spf=pass\r\n"
        b"Subject: hi\r\n"
        b"\r\n"
        b"Authentication-Results: mx.postroom.test; dkim=pass\r\n"
    )

    assert headers.remove_claims(content, OURS) == (content, 0)


@pytest.mark.timeout(20)
def test_a_field_folded_a_million_times_is_read_in_linear_time() -> None:
    # 4 MB of " b" continuation lines: joined line by line, the field
    # was copied once per line (minutes on the event loop, for one
    # stranger's message); the timeout catches a regression.
    folded = b"X-Long: a\r\n" + b" b\r\n" * 1_000_000
    content = folded + b"From: a@one.test\r\n" + folded + b"\r\nbody\r\n"

    assert headers.from_domains(content) == ["one.test"]
    assert len(headers.fields(headers.header_section(content))) == 3
    forged = b"Authentication-Results: mx.postroom.test; dkim=pass\r\n"
    cleaned, removed = headers.remove_claims(forged + content, OURS)
    assert (cleaned, removed) == (content, 1)
