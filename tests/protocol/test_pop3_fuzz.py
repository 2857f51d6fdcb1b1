"""Fuzzing the POP3 server core with hypothesis.

Whatever a client sends, in whatever pieces, under whatever options
and whatever the maildrop answers, the core must

* never raise (a client's mistake is an ``-ERR``, never an exception);
* write only well-formed output: status lines starting ``+OK``,
  ``-ERR`` or ``+ `` (a SASL challenge), each multi-line answer ended
  by a lone ``.`` line, nothing but CRLF line ends;
* answer the same however the input is cut.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from postroom.protocol.pop3.server import Options
from postroom.testing.pop3 import ALICE, PASSWORD, FakeMaildrop, message, run

VOCABULARY = [
    f"USER {ALICE}\r\n".encode(),
    f"PASS {PASSWORD}\r\n".encode(),
    b"PASS wrong\r\n",
    b"AUTH PLAIN\r\n",
    b"AUTH PLAIN AGFsaWNlQHBvc3Ryb29tLnRlc3QAc2VjcmV0IHBhc3M=\r\n",
    b"AUTH LOGIN\r\n",
    b"AUTH\r\n",
    b"*\r\n",
    b"=\r\n",
    b"APOP alice 0123456789abcdef0123456789abcdef\r\n",
    b"STLS\r\n",
    b"CAPA\r\n",
    b"STAT\r\n",
    b"LIST\r\n",
    b"LIST 1\r\n",
    b"UIDL\r\n",
    b"UIDL 2\r\n",
    b"RETR 1\r\n",
    b"RETR 3\r\n",
    b"TOP 2 1\r\n",
    b"TOP 1 99999999\r\n",
    b"DELE 1\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"QUIT\r\n",
    b"\r\n",
    b"\n",
    b"\xff\xfe\r\n",
    b"\x00\r\n",
    b"x" * 300,
]

MESSAGES = [message(1), b".starts with a dot\r\n.\r\n", b"", b"no final CRLF"]


def well_formed(output: bytes) -> None:
    assert output.endswith(b"\r\n") or not output
    lines = output.split(b"\r\n")[:-1]
    in_multiline = False
    for line in lines:
        assert b"\n" not in line and b"\r" not in line, line
        if in_multiline:
            if line == b".":
                in_multiline = False
            else:
                assert not line.startswith(b".") or line.startswith(b".."), line
            continue
        assert line.startswith((b"+OK", b"-ERR", b"+ ")), line
        in_multiline = _opens_multiline(line)
    assert not in_multiline


_MULTI = (
    b"+OK Capability list follows",
    b"+OK scan listing follows",
    b"+OK unique-id listing follows",
    b"+OK SASL mechanisms follow",
    b"+OK top of message follows",
)


def _opens_multiline(line: bytes) -> bool:
    return line.startswith(_MULTI) or (
        line.startswith(b"+OK ") and line.endswith(b" octets")
        and line[4:-7].isdigit()
    )


@settings(max_examples=150, deadline=None)
@given(
    words=st.lists(st.sampled_from(VOCABULARY), max_size=25),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=6),
    tls_available=st.booleans(),
    plaintext_allowed=st.booleans(),
    locked=st.booleans(),
)
def test_core_never_raises_and_writes_well_formed_output(
    words: list[bytes],
    cuts: list[int],
    tls_available: bool,
    plaintext_allowed: bool,
    locked: bool,
) -> None:
    data = b"".join(words)
    points = sorted({c for c in cuts if 0 < c < len(data)})
    bounds = zip([0, *points], [*points, len(data)], strict=True)
    chunks = [data[a:b] for a, b in bounds]

    def drop() -> FakeMaildrop:
        return FakeMaildrop(
            messages=list(MESSAGES), locked={ALICE} if locked else set()
        )

    def options() -> Options:
        return Options(
            tls_available=tls_available, plaintext_allowed=plaintext_allowed
        )

    got = run(chunks, options(), drop())
    well_formed(got.output)
    if b"STLS" not in data:
        # Cut points after STLS change what counts as sent before the
        # handshake, so only conversations without it must match.
        assert got == run([data], options(), drop())
