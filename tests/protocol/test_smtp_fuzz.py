"""Fuzzing the SMTP server core with hypothesis.

Whatever a peer sends, in whatever pieces, under whatever options and
whatever the driver answers, the core must

* never raise (a peer's mistake is a reply, never an exception);
* write only well-formed replies: lines of three digits, then ' ' or
  '-', one code per reply, at most 512 octets with CRLF (RFC 5321
  §4.5.3.1.5), an enhanced status of the reply's class when present;
* keep its state consistent and never move backwards illegally: the
  greeting is never re-entered, INITIAL never comes back after HELO
  except through a TLS handshake, TLS_PENDING only follows an accepted
  STARTTLS, CLOSED is final and silent, and a transaction only exists
  after HELO/EHLO.

Examples are kept modest so that the whole suite stays fast; the
hypothesis database keeps whatever it found for the next run.
"""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from postroom.protocol.smtp import events
from postroom.protocol.smtp.replies import Reply
from postroom.protocol.smtp.server import ServerConnection, ServerOptions, State
from postroom.testing.smtp import AcceptEverything, CoreDriver, parse_replies

# Lines and fragments a real or hostile client might send; the command
# mix strategy strings them together and cuts the result anywhere.
VOCABULARY = [
    b"EHLO client.example\r\n",
    b"HELO client.example\r\n",
    b"MAIL FROM:<a@example.org>\r\n",
    b"MAIL FROM:<> SIZE=20 BODY=8BITMIME RET=HDRS ENVID=x\r\n",
    b"MAIL FROM:<a@example.org> BODY=BINARYMIME\r\n",
    b"MAIL FROM:<j\xc3\xbcrgen@example.org> SMTPUTF8 REQUIRETLS\r\n",
    b"RCPT TO:<b@example.net>\r\n",
    b"RCPT TO:<c@example.net> NOTIFY=NEVER ORCPT=rfc822;c+40x\r\n",
    b"RCPT TO:<postmaster>\r\n",
    b"DATA\r\n",
    b"Subject: x\r\n\r\nbody\r\n",
    b"..stuffed\r\n",
    b".\r\n",
    b"\n.\n",
    b"\r.\r",
    b"\r\n\x00.\r\n",
    b"caf\xc3\xa9\r\n",
    b"BDAT 3\r\nabc",
    b"BDAT 2 LAST\r\nhi",
    b"BDAT 0 LAST\r\n",
    b"BDAT 5\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"QUIT\r\n",
    b"VRFY bob\r\n",
    b"EXPN staff\r\n",
    b"HELP\r\n",
    b"HELP RCPT\r\n",
    b"ETRN example.org\r\n",
    b"AUTH PLAIN\r\n",
    b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n",
    b"AUTH LOGIN\r\n",
    b"YWxpY2U=\r\n",
    b"c2VjcmV0\r\n",
    b"*\r\n",
    b"STARTTLS\r\n",
    b"FROB\r\n",
    b"NOOP\n",
    b"\x00\r\n",
    b"\xff\xfe\r\n",
    b"x" * 600,
    b"\r\n",
]

OPTIONS = st.builds(
    ServerOptions,
    max_message_size=st.integers(1, 200),
    max_recipients=st.integers(1, 3),
    tls_available=st.booleans(),
    tls_active=st.booleans(),
    auth_enabled=st.booleans(),
    auth_without_tls=st.booleans(),
    bare_newlines=st.sampled_from(["reject", "normalize"]),
    undeclared_8bit=st.sampled_from(["reject", "accept"]),
    hard_error_limit=st.integers(1, 30),
)

COMMAND_MIX = st.lists(
    st.one_of(st.sampled_from(VOCABULARY), st.binary(max_size=16)), max_size=40
).map(b"".join)

REFUSALS = [
    Reply.of(550, "5.7.1", "No"),
    Reply.of(451, "4.3.0", "Later"),
    Reply.of(454, "4.7.0", "TLS not available now"),
]


class Invariants:
    """Called by CoreDriver after every step; asserts what must hold."""

    def __init__(self, conn: ServerConnection) -> None:
        self.previous = conn.state
        self.had_helo = False  # since the start or the last STARTTLS

    def __call__(self, conn: ServerConnection, result: object) -> None:
        state, previous = conn.state, self.previous
        self.previous = state

        assert state is not State.GREETING
        if previous is State.CLOSED:
            assert state is State.CLOSED
        if state is State.INITIAL:
            assert not self.had_helo, f"{previous} -> INITIAL after HELO"
        if conn.helo is not None:
            self.had_helo = True
        if state is State.TLS_PENDING:
            self.had_helo = False  # tls_started() will forget the HELO
        if state is State.TLS_PENDING and previous is not State.TLS_PENDING:
            assert isinstance(result, Reply) and result.code == 220
            assert previous is State.READY, f"{previous} -> TLS_PENDING"
        if state is State.INITIAL:
            assert conn.helo is None and conn.transaction is None

        if state in (State.READY, State.MAIL, State.AUTH, State.DATA):
            assert conn.helo is not None, f"{state} without HELO"
        if state is State.READY:
            assert conn.transaction is None
        if state in (State.MAIL, State.DATA):
            assert conn.transaction is not None
        if state is State.DATA:
            assert conn.transaction is not None and conn.transaction.recipients
        if state is State.AUTH:
            assert conn.auth_offered
        if conn.transaction is not None:
            assert conn.helo is not None


def check_output(output: bytes) -> None:
    for line in output.split(b"\r\n")[:-1]:
        assert line[:3].isdigit() and line[3:4] in (b" ", b"-"), line[:60]
        assert len(line) + 2 <= 512, line[:60]
    for reply in parse_replies(output):
        assert 200 <= reply.code <= 599
        if reply.enhanced:
            assert reply.enhanced[0] == str(reply.code)[0]


def run(
    options: ServerOptions, data: bytes, cuts: list[int], answers: list[bool]
) -> CoreDriver:
    """Feed *data* cut at *cuts*; the driver accepts or refuses each
    answer-required event as *answers* says (accepting once they run out)."""
    accept = AcceptEverything()
    verdicts = iter(answers)

    def answer(event: events.Event) -> Reply:
        if next(verdicts, True):
            return accept(event)
        return REFUSALS[len(driver.events) % len(REFUSALS)]

    driver = CoreDriver(options, answer=answer, greeting=None)
    driver.conn.greet(Reply.of(220, "", "fuzz"))
    driver.conn.data_to_send()
    driver.observer = Invariants(driver.conn)

    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    closed_at = None
    for start, end in itertools.pairwise(bounds):
        driver.send(data[start:end])
        if driver.state is State.CLOSED and closed_at is None:
            closed_at = len(driver.output)
    driver.eof()

    check_output(bytes(driver.output))
    if closed_at is not None:
        assert len(driver.output) == closed_at, "output after the core closed"
    assert driver.state is State.CLOSED
    assert isinstance(driver.events[-1], events.Closed)
    return driver


@settings(max_examples=300, deadline=None)
@given(OPTIONS, st.binary(max_size=300), st.lists(st.integers(0, 400), max_size=8))
def test_random_bytes(options: ServerOptions, data: bytes, cuts: list[int]) -> None:
    run(options, data, cuts, [])


@settings(max_examples=300, deadline=None)
@given(
    OPTIONS,
    COMMAND_MIX,
    st.lists(st.integers(0, 2000), max_size=12),
    st.lists(st.booleans(), max_size=12),
)
def test_random_command_mix(
    options: ServerOptions, data: bytes, cuts: list[int], answers: list[bool]
) -> None:
    run(options, data, cuts, answers)


@settings(max_examples=100, deadline=None)
@given(OPTIONS, COMMAND_MIX)
def test_split_does_not_change_the_conversation(
    options: ServerOptions, data: bytes
) -> None:
    # The property the transcript split tests check exhaustively, here on
    # random conversations: one piece and one byte at a time agree.
    # XXX: max_message_size stays out of reach of these messages, because
    # of the known split bug at the size limit (see test_smtp_core.py).
    options.max_message_size = 10_000
    # Not a bug but the point of CVE-2011-0411: what is pipelined behind
    # STARTTLS is dropped, what arrives after the handshake is not.
    options.tls_available = False

    def conversation(chunks: list[bytes]) -> tuple[list[object], bytes]:
        driver = CoreDriver(ServerOptions(**vars(options)))
        for chunk in chunks:
            driver.send(chunk)
        driver.eof()
        return list(driver.events), bytes(driver.output)

    assert conversation([data[i : i + 1] for i in range(len(data))]) == (
        conversation([data])
    )
