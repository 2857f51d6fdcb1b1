"""Real-world-shaped messages for the structure, section and search
tests, with CRLF line ends as the store keeps them."""

from __future__ import annotations


def crlf(*lines: str) -> bytes:
    return "".join(line + "\r\n" for line in lines).encode("utf-8")


PLAIN = crlf(
    'From: "Doe, Jane" <jane@example.org>',
    'To: bob@example.net, "Carol" <carol@example.com>',
    "Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=",
    "Date: Wed, 6 Mar 2024 09:00:00 +0000",
    "Message-ID: <p1@example.org>",
    'Content-Type: text/plain; charset="utf-8"',
    "Content-Transfer-Encoding: quoted-printable",
    "",
    "Hello=20there, caf=C3=A9",
    "Line two",
)

ALTERNATIVE = crlf(
    "From: a@example.org",
    "Subject: Alt",
    "MIME-Version: 1.0",
    'Content-Type: multipart/alternative; boundary="XX"',
    "",
    "preamble",
    "--XX",
    "Content-Type: text/plain",
    "",
    "plain body",
    "--XX",
    "Content-Type: text/html; charset=utf-8",
    "",
    "<p>html</p>",
    "--XX--",
    "epilogue",
)

MIXED = crlf(
    "From: a@example.org",
    "Subject: Mixed",
    "Content-Type: multipart/mixed;",
    "\tboundary=outer",
    "",
    "--outer",
    "Content-Type: text/plain; charset=us-ascii",
    "Content-Language: en",
    "",
    "See attached.",
    "--outer",
    'Content-Type: application/pdf; name="r.pdf"',
    'Content-Disposition: attachment; filename="r.pdf"',
    "Content-Transfer-Encoding: base64",
    "Content-ID: <c1@x>",
    "",
    "JVBERi0=",
    "--outer",
    "Content-Type: message/rfc822",
    "",
    "From: inner@example.net",
    "Subject: Inner",
    "",
    "inner body",
    "--outer--",
)

NO_HEADERS = b"\r\nJust a body\r\n"

GROUPS = crlf(
    "From: =?iso-8859-1?q?J=F6rg?= <jorg@example.de>",
    "To: undisclosed-recipients:;",
    'Cc: Team: a@x.org, "B" <b@y.org>;, c@z.org (comment)',
    "Subject: Caf\u00e9",
    "Reply-To:",
    "",
    "body",
)

BASE64_TEXT = crlf(
    "From: x@example.org",
    "Subject: =?utf-8?b?w5xiZXJ3ZWlzdW5n?=",
    "Date: Thu, 1 Feb 2024 23:30:00 -0800",
    "Content-Type: text/plain; charset=utf-8",
    "Content-Transfer-Encoding: base64",
    "",
    "R3LDvMOfZSBhdXMgTcO8bmNoZW4=",
)
