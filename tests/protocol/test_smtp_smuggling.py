"""SMTP smuggling and STARTTLS injection, one regression test per published
attack, named after it.

SMTP smuggling (SEC Consult, December 2023; CVE-2023-51764 for Postfix,
CVE-2023-51765 for Sendmail, CVE-2023-51766 for Exim): an outbound server
passes a lone "." between non-standard line ends through unchanged, and
an inbound server that takes that sequence for the end of data reads the
rest as a second, forged transaction. We are the inbound server in that
story (we must not end DATA early) and may be the outbound one later
(what we store must not carry the marker onwards). Every variant below:

* does not end DATA: nothing is answered until the real <CRLF>.<CRLF>,
  and the smuggled MAIL/RCPT/DATA never become events;
* is refused at the real end with 550 5.6.0 by default;
* with ``bare_newlines = "normalize"`` is accepted as one message whose
  content, as the tests below spell out, cannot smuggle anything on.

CVE-2011-0411 (Wietse Venema's STARTTLS plaintext injection): commands
pipelined after STARTTLS in the same cleartext packet must be discarded,
not executed inside the TLS session.
"""

from __future__ import annotations

import pytest

from postroom.protocol.smtp import events, replies
from postroom.protocol.smtp.server import ServerOptions, State
from postroom.testing.smtp import CoreDriver, dot_stuff

HEAD = b"From: <ceo@example.org>\r\nSubject: hello\r\n\r\nfirst message"
SMUGGLED = (
    b"MAIL FROM:<ceo@example.org>\r\n"
    b"RCPT TO:<victim@example.net>\r\n"
    b"DATA\r\n"
    b"From: <ceo@example.org>\r\nSubject: forged\r\n\r\nsecond message\r\n"
)

# The end-of-data sequences of the SEC Consult paper and its follow-ups.
VARIANTS = {
    "lf_dot_lf": b"\n.\n",
    "cr_dot_cr": b"\r.\r",
    "lf_dot_crlf": b"\n.\r\n",
    "crlf_dot_lf": b"\r\n.\n",
    "crlf_dot_cr": b"\r\n.\r",
    "cr_dot_crlf": b"\r.\r\n",
    "crlf_nul_dot_crlf": b"\r\n\0.\r\n",
    "crlf_dot_nul_crlf": b"\r\n.\0\r\n",
}
BARE_NEWLINE_VARIANTS = {k: v for k, v in VARIANTS.items() if b"\0" not in v}


def in_data(**options: object) -> CoreDriver:
    driver = CoreDriver(ServerOptions(**options))  # type: ignore[arg-type]
    driver.send(
        b"EHLO attacker.example\r\nMAIL FROM:<a@attacker.example>\r\n"
        b"RCPT TO:<victim@example.net>\r\nDATA\r\n"
    )
    assert driver.state is State.DATA
    return driver


def smuggle(marker: bytes, **options: object) -> CoreDriver:
    """Send a message hiding a second transaction behind *marker*, check
    that nothing ended early, and end the message properly."""
    driver = in_data(**options)

    # Up to the real end, the core must stay in DATA and say nothing.
    assert driver.send(HEAD + marker + SMUGGLED) == []
    assert driver.state is State.DATA

    driver.send(b".\r\n")
    mails = [e for e in driver.events if isinstance(e, events.MailFrom)]
    assert len(mails) == 1, "the smuggled MAIL FROM was executed"
    return driver


def assert_refused(marker: bytes) -> None:
    driver = smuggle(marker)

    reply = replies.NUL_IN_DATA if b"\0" in marker else replies.BARE_NEWLINE_DATA
    assert driver.conn.data_to_send() == b""
    assert driver.output.endswith(reply.render())
    assert driver.state is State.READY and driver.conn.transaction is None


# -- one test per published variant: refused by default --------------------


def test_lf_dot_lf() -> None:
    assert_refused(VARIANTS["lf_dot_lf"])


def test_cr_dot_cr() -> None:
    assert_refused(VARIANTS["cr_dot_cr"])


def test_lf_dot_crlf() -> None:
    assert_refused(VARIANTS["lf_dot_crlf"])


def test_crlf_dot_lf() -> None:
    assert_refused(VARIANTS["crlf_dot_lf"])


def test_crlf_dot_cr() -> None:
    assert_refused(VARIANTS["crlf_dot_cr"])


def test_cr_dot_crlf() -> None:
    assert_refused(VARIANTS["cr_dot_crlf"])


def test_crlf_nul_dot_crlf() -> None:
    assert_refused(VARIANTS["crlf_nul_dot_crlf"])


def test_crlf_dot_nul_crlf() -> None:
    assert_refused(VARIANTS["crlf_dot_nul_crlf"])


@pytest.mark.parametrize("marker", list(VARIANTS.values()), ids=list(VARIANTS))
def test_variant_split_byte_by_byte_does_not_end_data(marker: bytes) -> None:
    driver = in_data()

    for byte in HEAD + marker + SMUGGLED:
        assert driver.send(bytes([byte])) == []

    assert driver.state is State.DATA


@pytest.mark.parametrize("marker", list(VARIANTS.values()), ids=list(VARIANTS))
def test_variant_in_bdat_is_refused(marker: bytes) -> None:
    # BDAT has no end marker to fool, but the content must not carry one
    # on to a DATA-speaking next hop either.
    driver = in_data()
    driver.send(b".\r\n")  # abandon the DATA transaction
    driver.send(b"MAIL FROM:<a@attacker.example>\r\nRCPT TO:<v@example.net>\r\n")
    chunk = HEAD + marker + SMUGGLED

    (reply,) = driver.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)

    assert reply.code == 550 and reply.enhanced == "5.6.0"


# -- normalize mode: what the stored message guarantees -------------------------
#
# "normalize" accepts the message and rewrites every bare CR and LF to
# CRLF. That alone would turn "\n.\n" into "\r\n.\r\n", the very marker
# the attacker wanted, so the guarantees worth testing are about what a
# next hop will make of the stored content:
#
# 1. It has CRLF line ends only, so a strict and a lax next hop split
#    it into the same lines.
# 2. Sent on by the standard rules (dot-stuffed, then <CRLF>.<CRLF>), it
#    contains no end-of-data sequence of any variant before the real
#    one, and a fresh core reads it back as exactly one message with
#    exactly this content.
# 3. The smuggled marker itself does not survive as a lone "." line:
#    consumers that do not dot-stuff (a pipe to sendmail without -i,
#    scripts, some milters) would stop there. Postfix's normalize mode
#    unstuffs such a dot like any other, and so does our core: line ends
#    are rewritten before dot-unstuffing.


def stored(marker: bytes) -> bytes:
    driver = smuggle(marker, bare_newlines="normalize")
    (event,) = [e for e in driver.events if isinstance(e, events.Message)]
    return event.content


@pytest.mark.parametrize(
    "marker", list(BARE_NEWLINE_VARIANTS.values()), ids=list(BARE_NEWLINE_VARIANTS)
)
def test_normalized_content_has_crlf_only(marker: bytes) -> None:
    content = stored(marker)

    assert content.count(b"\r") == content.count(b"\n") == content.count(b"\r\n")
    assert content.startswith(HEAD) and content.endswith(SMUGGLED)


@pytest.mark.parametrize(
    "marker", list(BARE_NEWLINE_VARIANTS.values()), ids=list(BARE_NEWLINE_VARIANTS)
)
def test_normalized_content_relays_as_one_message(marker: bytes) -> None:
    content = stored(marker)
    wire = dot_stuff(content)

    # No end-of-data sequence of any variant before the real one, which
    # is the last five octets.
    for lookalike in BARE_NEWLINE_VARIANTS.values():
        at = wire.find(lookalike)
        assert at == -1 or at >= len(wire) - 5, lookalike

    # And a strict receiver gets back exactly one message, unchanged.
    driver = in_data()
    driver.send(wire)
    assert [e.content for e in driver.events if isinstance(e, events.Message)] == [
        content
    ]


@pytest.mark.parametrize(
    "marker",
    [
        pytest.param(
            marker,
            id=name,
        )
        for name, marker in BARE_NEWLINE_VARIANTS.items()
    ],
)
def test_normalized_marker_leaves_no_lone_dot(marker: bytes) -> None:
    lines = stored(marker).split(b"\r\n")

    assert b"." not in lines


def test_normalize_still_refuses_nul() -> None:
    for name in ("crlf_nul_dot_crlf", "crlf_dot_nul_crlf"):
        driver = smuggle(VARIANTS[name], bare_newlines="normalize")
        assert driver.output.endswith(replies.NUL_IN_DATA.render()), name


def test_client_dot_stuffed_dot_line_survives_normalize() -> None:
    # The one legitimate lone "." line: the client sent "..".
    driver = in_data(bare_newlines="normalize")

    driver.send(b"a\nb\r\n..\r\n.\r\n")

    (event,) = [e for e in driver.events if isinstance(e, events.Message)]
    assert event.content == b"a\r\nb\r\n.\r\n"


# -- CVE-2011-0411: STARTTLS plaintext command injection -----------------------

INJECTED = b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@example.net>\r\n"


def starttls_driver() -> CoreDriver:
    driver = CoreDriver(ServerOptions(tls_available=True), auto_tls=False)
    driver.command("EHLO attacker.example")
    return driver


def assert_nothing_injected(driver: CoreDriver) -> None:
    assert driver.state is State.TLS_PENDING
    driver.conn.tls_started()
    assert driver.conn.helo is None and driver.conn.transaction is None

    # Inside TLS the client starts over; had MAIL been executed, this
    # RCPT would be accepted instead of asking for MAIL.
    driver.command("EHLO attacker.example")
    assert driver.command("RCPT TO:<victim@example.net>") == [replies.NEED_MAIL]
    assert not any(isinstance(e, events.MailFrom) for e in driver.events)


def test_cve_2011_0411_same_packet() -> None:
    driver = starttls_driver()

    assert driver.send(b"STARTTLS\r\n" + INJECTED) == [replies.READY_TLS]

    assert_nothing_injected(driver)


def test_cve_2011_0411_arriving_before_the_answer() -> None:
    # The injected bytes come in while STARTTLS waits for the driver.
    driver = starttls_driver()
    conn = driver.conn
    conn.receive_data(b"STARTTLS\r\n")
    event = conn.next_event()
    assert isinstance(event, events.StartTls)

    conn.receive_data(INJECTED)
    conn.respond(replies.READY_TLS)

    assert conn.next_event() is events.NEED_DATA
    assert conn.data_to_send() == replies.READY_TLS.render()
    assert_nothing_injected(driver)


def test_cve_2011_0411_arriving_before_the_handshake() -> None:
    driver = starttls_driver()
    driver.command("STARTTLS")

    assert driver.send(INJECTED) == []

    assert_nothing_injected(driver)
