"""The SMTP server core, bytes in and replies and events out, no sockets.

One section per command, mostly tables of (input, expected reply). Replies
are compared with the constants in ``replies``; where the core builds a
reply inline (a bad parameter value, say) the table names only its code
and enhanced status, as a string "501 5.5.4", since the text is not part
of the contract. The last section feeds every transcript split at every
byte boundary.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from postroom.errors import LocalProtocolError
from postroom.protocol.smtp import events, replies
from postroom.protocol.smtp.events import NEED_DATA, PAUSED
from postroom.protocol.smtp.replies import Reply
from postroom.protocol.smtp.server import (
    COMMAND_LINE_LIMIT,
    HELP_TEXT,
    ServerConnection,
    ServerOptions,
    State,
)
from postroom.protocol.smtp.syntax import Address
from postroom.testing.smtp import (
    GREETING,
    AcceptEverything,
    CoreDriver,
    Transcript,
    load_transcripts,
    replay_core,
)

TRANSCRIPTS = Path(__file__).parent.parent / "transcripts"

# Replies the core writes inline; only their status is contractual.
BAD_SENDER = "501 5.1.7"
BAD_RECIPIENT = "501 5.1.3"
BAD_VALUE = "501 5.5.4"
TOO_MANY_ERRORS = "421 4.7.0"
OCTETS_RECEIVED = "250 2.0.0"
NOT_IN_TRANSACTION = "503 5.5.1"
NOT_UTF8 = "500 5.5.2"
REFUSING = "503 5.5.0"

# A refusal a policy might give, to see that refused commands do nothing.
POLICY_NO = Reply.of(550, "5.7.1", "No")

PLAIN_ALICE = base64.b64encode(b"\0alice\0secret").decode()
NOT_UTF8_B64 = base64.b64encode(b"\xff\xfe").decode()
EXTENSIONS = [
    "PIPELINING",
    "SIZE 36700160",
    "ETRN",
    "ENHANCEDSTATUSCODES",
    "8BITMIME",
    "BINARYMIME",
    "CHUNKING",
    "DSN",
    "SMTPUTF8",
]


def status(reply: Reply) -> str:
    return f"{reply.code} {reply.enhanced}"


def assert_replies(got: list[Reply], *want: Reply | str) -> None:
    """*want* items are Reply constants (compared whole) or "CODE X.Y.Z"."""
    assert len(got) == len(want), got
    for g, w in zip(got, want, strict=True):
        assert (g if isinstance(w, Reply) else status(g)) == w


def ready(**options: object) -> CoreDriver:
    driver = CoreDriver(ServerOptions(**options))  # type: ignore[arg-type]
    (reply,) = driver.command("EHLO client.example.org")
    assert reply.code == 250
    return driver


def in_mail(params: str = "", **options: object) -> CoreDriver:
    driver = ready(**options)
    assert driver.command(f"MAIL FROM:<alice@example.org>{params}") == [
        replies.SENDER_OK
    ]
    return driver


def in_rcpt(params: str = "", **options: object) -> CoreDriver:
    driver = in_mail(params, **options)
    assert driver.command("RCPT TO:<bob@example.net>") == [replies.RECIPIENT_OK]
    return driver


def refusing(*kinds: type) -> AcceptEverything:
    """A policy that refuses events of *kinds* with POLICY_NO."""

    class Refuse(AcceptEverything):
        def __call__(self, event: events.Event) -> Reply:
            if isinstance(event, kinds):
                return POLICY_NO
            return super().__call__(event)

    return Refuse()


def message(driver: CoreDriver) -> events.Message:
    (event,) = [e for e in driver.last_events if isinstance(e, events.Message)]
    return event


# -- greeting and driver contract ------------------------------------------


def test_greeting_opens_the_session() -> None:
    driver = CoreDriver()

    assert driver.greeting == [GREETING]
    assert driver.state is State.INITIAL


def test_554_greeting_refuses_everything_but_quit() -> None:
    driver = CoreDriver(greeting=Reply.of(554, "5.3.2", "No service"))

    assert_replies(driver.command("EHLO client.example.org"), REFUSING)
    assert_replies(driver.command("MAIL FROM:<a@example.org>"), REFUSING)
    assert driver.command("QUIT") == [replies.CLOSING]
    assert driver.closed


def test_421_greeting_closes_at_once() -> None:
    driver = CoreDriver(greeting=replies.TOO_MANY_CONNECTIONS)

    assert driver.state is State.CLOSED
    assert driver.command("EHLO client.example.org") == []


def test_greeting_twice_is_a_local_error() -> None:
    conn = ServerConnection(ServerOptions())
    conn.greet(GREETING)

    with pytest.raises(LocalProtocolError):
        conn.greet(GREETING)


def test_respond_without_event_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        CoreDriver().conn.respond(replies.NOOP_OK)


def test_core_pauses_until_answered() -> None:
    conn = ServerConnection(ServerOptions())
    conn.greet(GREETING)
    conn.receive_data(b"EHLO a.example\r\nNOOP\r\n")

    event = conn.next_event()
    assert isinstance(event, events.Helo)
    assert conn.next_event() is PAUSED

    conn.respond(event.reply)
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send().endswith(replies.NOOP_OK.render())


def test_close_sends_the_reason_and_ends() -> None:
    driver = ready()

    driver.conn.close(replies.TIMEOUT)

    assert driver.conn.data_to_send() == replies.TIMEOUT.render()
    assert driver.state is State.CLOSED
    assert driver.command("NOOP") == []


def test_counters_summarize_the_session() -> None:
    driver = in_rcpt()
    driver.command("RCPT TO:<bad")
    driver.send("DATA\r\nhi\r\n.\r\nFROB\r\nQUIT\r\n")

    assert driver.conn.counter.summary() == (
        "ehlo=1 mail=1 rcpt=1/2 data=1 unknown=0/1 quit=1"
    )


# -- HELO and EHLO ------------------------------------------------------------


@pytest.mark.parametrize(
    "options, extensions",
    [
        ({}, EXTENSIONS),
        ({"max_message_size": 1000}, [*EXTENSIONS[:1], "SIZE 1000", *EXTENSIONS[2:]]),
        ({"tls_available": True}, [*EXTENSIONS[:3], "STARTTLS", *EXTENSIONS[3:]]),
        # AUTH is withheld until TLS unless configured otherwise.
        (
            {"tls_available": True, "auth_enabled": True},
            [*EXTENSIONS[:3], "STARTTLS", *EXTENSIONS[3:]],
        ),
        (
            {"auth_enabled": True, "auth_without_tls": True},
            [*EXTENSIONS[:3], "AUTH PLAIN LOGIN", *EXTENSIONS[3:]],
        ),
        # Once TLS is up: no STARTTLS, AUTH offered, REQUIRETLS (RFC 8689).
        (
            {"tls_available": True, "tls_active": True, "auth_enabled": True},
            [*EXTENSIONS[:3], "AUTH PLAIN LOGIN", *EXTENSIONS[3:], "REQUIRETLS"],
        ),
    ],
    ids=[
        "plain",
        "size",
        "tls-available",
        "auth-needs-tls",
        "auth-without-tls",
        "tls-active",
    ],
)
def test_ehlo_lists_extensions(
    options: dict[str, object], extensions: list[str]
) -> None:
    driver = CoreDriver(ServerOptions(hostname="mx.example.org", **options))  # type: ignore[arg-type]

    (reply,) = driver.command("EHLO client.example.org")

    assert reply == Reply(250, "", ("mx.example.org", *extensions))
    assert driver.last_events == [events.Helo("client.example.org", True, reply)]
    assert driver.state is State.READY and driver.conn.esmtp


def test_helo_has_no_extensions() -> None:
    driver = CoreDriver()

    (reply,) = driver.command("HELO client.example.org")

    assert reply == Reply.of(250, "", "localhost")
    assert driver.conn.helo == "client.example.org" and not driver.conn.esmtp


@pytest.mark.parametrize("line", ["EHLO", "EHLO ", "HELO", "EHLO two words"])
def test_helo_needs_one_name(line: str) -> None:
    driver = CoreDriver()

    assert driver.command(line) == [replies.HELO_SYNTAX]
    assert driver.state is State.INITIAL


def test_ehlo_resets_the_transaction() -> None:
    driver = in_rcpt()

    driver.command("EHLO client.example.org")

    assert driver.command("RCPT TO:<carol@example.net>") == [replies.NEED_MAIL]


def test_refused_ehlo_changes_nothing() -> None:
    driver = CoreDriver(answer=refusing(events.Helo))

    assert driver.command("EHLO client.example.org") == [POLICY_NO]
    assert driver.state is State.INITIAL
    assert driver.command("MAIL FROM:<a@example.org>") == [replies.NEED_HELO]


# -- MAIL -----------------------------------------------------------------------

MAIL_OK = [
    # (command, sender, parameters that differ from the defaults)
    ("MAIL FROM:<alice@example.org>", "alice@example.org", {}),
    ("mail from:<alice@example.org>", "alice@example.org", {}),
    ("MAIL FROM:<>", "", {}),
    ("MAIL FROM: <alice@example.org>", "alice@example.org", {}),
    ("MAIL FROM:alice@example.org", "alice@example.org", {}),
    ("MAIL FROM:<alice@EXAMPLE.org.>", "alice@example.org", {}),
    ("MAIL FROM:<a@example.org> SIZE=1000", "a@example.org", {"size": 1000}),
    ("MAIL FROM:<a@example.org> SIZE=36700160", "a@example.org", {"size": 36700160}),
    ("MAIL FROM:<a@example.org> BODY=7BIT", "a@example.org", {"body": "7BIT"}),
    ("MAIL FROM:<a@example.org> body=8bitmime", "a@example.org", {"body": "8BITMIME"}),
    (
        "MAIL FROM:<a@example.org> BODY=BINARYMIME",
        "a@example.org",
        {"body": "BINARYMIME"},
    ),
    ("MAIL FROM:<a@example.org> SMTPUTF8", "a@example.org", {"smtputf8": True}),
    (
        "MAIL FROM:<jürgen@example.org> SMTPUTF8",
        "jürgen@example.org",
        {"smtputf8": True},
    ),
    ("MAIL FROM:<a@example.org> RET=FULL", "a@example.org", {"ret": "FULL"}),
    ("MAIL FROM:<a@example.org> ret=hdrs", "a@example.org", {"ret": "HDRS"}),
    (
        "MAIL FROM:<a@example.org> ENVID=QQ314159+2Bx",
        "a@example.org",
        {"envid": "QQ314159+x"},
    ),
    ("MAIL FROM:<a@example.org> AUTH=<>", "a@example.org", {"auth": "<>"}),
    (
        "MAIL FROM:<a@example.org> AUTH=e+2Bf+40example.org",
        "a@example.org",
        {"auth": "e+f@example.org"},
    ),
    (
        "MAIL FROM:<a@example.org> RET=HDRS ENVID=x SIZE=1 BODY=8BITMIME",
        "a@example.org",
        {"ret": "HDRS", "envid": "x", "size": 1, "body": "8BITMIME"},
    ),
]


@pytest.mark.parametrize("line, sender, params", MAIL_OK, ids=[c[0] for c in MAIL_OK])
def test_mail_accepted(line: str, sender: str, params: dict[str, object]) -> None:
    driver = ready()

    assert driver.command(line) == [replies.SENDER_OK]

    (event,) = driver.last_events
    assert isinstance(event, events.MailFrom)
    assert str(event.sender) == sender
    expected = events.MailParams(**params)  # type: ignore[arg-type]
    assert event.params == expected
    assert driver.state is State.MAIL


MAIL_REFUSED = [
    ("MAIL TO:<alice@example.org>", replies.MAIL_SYNTAX),
    ("MAIL", replies.MAIL_SYNTAX),
    ("MAIL FROM:<alice@example.org", BAD_SENDER),
    ("MAIL FROM:<alice>", BAD_SENDER),
    ("MAIL FROM:<alice@example.org>SIZE=10", BAD_SENDER),
    ("MAIL FROM:<a@example.org> SIZE=36700161", replies.MESSAGE_TOO_BIG),
    ("MAIL FROM:<a@example.org> SIZE=ten", BAD_VALUE),
    # "²".isdigit() is true but int("²") fails: digits must be ASCII.
    ("MAIL FROM:<a@example.org> SMTPUTF8 SIZE=\u00b2", BAD_VALUE),
    ("MAIL FROM:<a@example.org> SIZE", BAD_VALUE),
    ("MAIL FROM:<a@example.org> BODY=9BIT", BAD_VALUE),
    ("MAIL FROM:<a@example.org> SMTPUTF8=yes", BAD_VALUE),
    ("MAIL FROM:<a@example.org> RET=ALL", BAD_VALUE),
    ("MAIL FROM:<a@example.org> ENVID=" + "x" * 101, BAD_VALUE),
    ("MAIL FROM:<a@example.org> ENVID=bad+zz", BAD_VALUE),
    ("MAIL FROM:<a@example.org> REQUIRETLS", replies.REQUIRETLS_NEEDS_TLS),
    ("MAIL FROM:<a@example.org> X-FROB=1", replies.UNKNOWN_PARAMETER),
    ("MAIL FROM:<a@example.org> SIZE=1 SIZE=2", BAD_VALUE),
    ("MAIL FROM:<a@example.org> size=1 SIZE=1", BAD_VALUE),
    ("MAIL FROM:<a@example.org> =x", BAD_VALUE),
    ("MAIL FROM:<jürgen@example.org>", replies.NON_ASCII_ADDRESS),
    ("MAIL FROM:<alice@bücher.example>", replies.NON_ASCII_ADDRESS),
    ("MAIL FROM:<a@b@example.org>", BAD_SENDER),
]


@pytest.mark.parametrize(
    "line, reply", MAIL_REFUSED, ids=[c[0][:60] for c in MAIL_REFUSED]
)
def test_mail_refused(line: str, reply: Reply | str) -> None:
    driver = ready()

    assert_replies(driver.command(line), reply)
    assert driver.last_events == []
    assert driver.state is State.READY


def test_mail_idna_domain_has_ascii_form() -> None:
    driver = ready()

    driver.command("MAIL FROM:<jürgen@Bücher.example> SMTPUTF8")

    (event,) = driver.last_events
    assert isinstance(event, events.MailFrom)
    assert event.sender == Address("jürgen", "bücher.example", "xn--bcher-kva.example")


def test_mail_requiretls_under_tls() -> None:
    driver = ready(tls_active=True)

    assert driver.command("MAIL FROM:<a@example.org> REQUIRETLS") == [replies.SENDER_OK]
    (event,) = driver.last_events
    assert isinstance(event, events.MailFrom) and event.params.requiretls


@pytest.mark.parametrize(
    "setup, reply",
    [
        ([], replies.NEED_HELO),
        (["EHLO client.example.org", "MAIL FROM:<a@example.org>"], replies.NESTED_MAIL),
        (["HELO client.example.org"], replies.UNKNOWN_PARAMETER),  # no ESMTP
    ],
    ids=["before-helo", "nested", "params-after-helo"],
)
def test_mail_out_of_place(setup: list[str], reply: Reply) -> None:
    driver = CoreDriver()
    for line in setup:
        driver.command(line)

    assert driver.command("MAIL FROM:<b@example.org> SIZE=1") == [reply]


def test_refused_mail_starts_no_transaction() -> None:
    driver = ready()
    driver.answer = refusing(events.MailFrom)

    assert driver.command("MAIL FROM:<a@example.org>") == [POLICY_NO]
    assert driver.command("RCPT TO:<b@example.org>") == [replies.NEED_MAIL]


# -- RCPT -----------------------------------------------------------------------

RCPT_OK = [
    # (command, recipient, notify, orcpt)
    (
        "RCPT TO:<bob@example.net>",
        Address("bob", "example.net", "example.net"),
        None,
        None,
    ),
    (
        "rcpt to: <bob@example.net>",
        Address("bob", "example.net", "example.net"),
        None,
        None,
    ),
    ("RCPT TO:<postmaster>", Address("postmaster", "", ""), None, None),
    ("RCPT TO:<PostMaster>", Address("PostMaster", "", ""), None, None),
    (
        "RCPT TO:<@relay.example,@hop.example:bob@example.net>",
        Address("bob", "example.net", "example.net"),
        None,
        None,
    ),
    (
        'RCPT TO:<"bob@home"@example.net>',
        Address('"bob@home"', "example.net", "example.net"),
        None,
        None,
    ),
    (
        'RCPT TO:<"john \\"jr\\" doe"@example.net>',
        Address('"john \\"jr\\" doe"', "example.net", "example.net"),
        None,
        None,
    ),
    (
        "RCPT TO:<bob@[192.0.2.7]>",
        Address("bob", "[192.0.2.7]", "[192.0.2.7]"),
        None,
        None,
    ),
    (
        "RCPT TO:<bob@[IPv6:2001:DB8:0::1]>",
        Address("bob", "[IPv6:2001:db8::1]", "[IPv6:2001:db8::1]"),
        None,
        None,
    ),
    (
        "RCPT TO:<bob@example.net> NOTIFY=SUCCESS,FAILURE",
        Address("bob", "example.net", "example.net"),
        ("SUCCESS", "FAILURE"),
        None,
    ),
    (
        "RCPT TO:<bob@example.net> NOTIFY=delay",
        Address("bob", "example.net", "example.net"),
        ("DELAY",),
        None,
    ),
    (
        "RCPT TO:<bob@example.net> NOTIFY=NEVER",
        Address("bob", "example.net", "example.net"),
        (),
        None,
    ),
    (
        "RCPT TO:<bob@example.net> ORCPT=rfc822;bob+40example.net",
        Address("bob", "example.net", "example.net"),
        None,
        "rfc822;bob@example.net",
    ),
    (
        "RCPT TO:<bob@example.net> ORCPT=RFC822;b+2Bc@x NOTIFY=FAILURE",
        Address("bob", "example.net", "example.net"),
        ("FAILURE",),
        "rfc822;b+c@x",
    ),
]


@pytest.mark.parametrize(
    "line, recipient, notify, orcpt", RCPT_OK, ids=[c[0] for c in RCPT_OK]
)
def test_rcpt_accepted(
    line: str, recipient: Address, notify: tuple[str, ...] | None, orcpt: str | None
) -> None:
    driver = in_mail()

    assert driver.command(line) == [replies.RECIPIENT_OK]

    assert driver.last_events == [
        events.RcptTo(recipient, events.RcptParams(notify, orcpt))
    ]
    assert driver.conn.transaction is not None
    assert driver.conn.transaction.recipients[-1][0] == recipient


RCPT_REFUSED = [
    ("RCPT FROM:<bob@example.net>", replies.RCPT_SYNTAX),
    ("RCPT", replies.RCPT_SYNTAX),
    ("RCPT TO:<>", BAD_RECIPIENT),
    ("RCPT TO:<bob>", BAD_RECIPIENT),
    ("RCPT TO:<bob@a@example.net>", BAD_RECIPIENT),
    ("RCPT TO:<bob@@example.net>", BAD_RECIPIENT),
    ("RCPT TO:<bob@[300.1.1.1]>", BAD_RECIPIENT),
    ("RCPT TO:<bob@[general:literal]>", BAD_RECIPIENT),
    ("RCPT TO:<@relay.example:>", BAD_RECIPIENT),
    ("RCPT TO:<bob@-example.net>", BAD_RECIPIENT),
    ("RCPT TO:<" + "b" * 65 + "@example.net>", BAD_RECIPIENT),
    ("RCPT TO:<b@" + "x" * 260 + ".net>", BAD_RECIPIENT),
    ("RCPT TO:<用户@例子.广告>", replies.NON_ASCII_ADDRESS),
    ("RCPT TO:<bob@example.net> NOTIFY=NEVER,SUCCESS", BAD_VALUE),
    ("RCPT TO:<bob@example.net> NOTIFY=SOMETIMES", BAD_VALUE),
    ("RCPT TO:<bob@example.net> NOTIFY", BAD_VALUE),
    ("RCPT TO:<bob@example.net> ORCPT=rfc822", BAD_VALUE),
    ("RCPT TO:<bob@example.net> ORCPT=rfc822;", BAD_VALUE),
    ("RCPT TO:<bob@example.net> ORCPT=;bob", BAD_VALUE),
    ("RCPT TO:<bob@example.net> ORCPT=rfc822;bob+4", BAD_VALUE),
    ("RCPT TO:<bob@example.net> NOTIFY=NEVER NOTIFY=NEVER", BAD_VALUE),
    ("RCPT TO:<bob@example.net> SIZE=10", replies.UNKNOWN_PARAMETER),
]


@pytest.mark.parametrize(
    "line, reply", RCPT_REFUSED, ids=[c[0][:60] for c in RCPT_REFUSED]
)
def test_rcpt_refused(line: str, reply: Reply | str) -> None:
    driver = in_mail()

    assert_replies(driver.command(line), reply)
    assert driver.last_events == []
    assert driver.conn.transaction is not None
    assert driver.conn.transaction.recipients == []


def test_rcpt_non_ascii_with_smtputf8() -> None:
    driver = in_mail(" SMTPUTF8")

    assert driver.command("RCPT TO:<用户@例子.广告>") == [replies.RECIPIENT_OK]
    (event,) = driver.last_events
    assert isinstance(event, events.RcptTo)
    assert event.recipient.ascii_domain == "xn--fsqu00a.xn--4rr70v"


def test_rcpt_limit_counts_accepted_recipients_only() -> None:
    driver = in_mail(max_recipients=2)

    replies_ = [
        driver.command(f"RCPT TO:<r{i}@example.net>")[0] for i in range(3)
    ] + driver.command("RCPT TO:<bad")
    assert replies_ == [
        replies.RECIPIENT_OK,
        replies.RECIPIENT_OK,
        replies.TOO_MANY_RECIPIENTS,
        Reply.of(501, "5.1.3", "Bad recipient address syntax"),
    ]

    # A recipient the policy refuses does not use up the limit.
    driver = in_mail(max_recipients=1)
    driver.answer = refusing(events.RcptTo)
    assert driver.command("RCPT TO:<a@example.net>") == [POLICY_NO]
    driver.answer = AcceptEverything()
    assert driver.command("RCPT TO:<b@example.net>") == [replies.RECIPIENT_OK]


@pytest.mark.parametrize(
    "setup, reply",
    [([], replies.NEED_HELO), (["EHLO client.example.org"], replies.NEED_MAIL)],
    ids=["before-helo", "before-mail"],
)
def test_rcpt_out_of_place(setup: list[str], reply: Reply) -> None:
    driver = CoreDriver()
    for line in setup:
        driver.command(line)

    assert driver.command("RCPT TO:<bob@example.net>") == [reply]


# -- DATA -----------------------------------------------------------------------


def test_data_delivers_the_message() -> None:
    driver = in_rcpt(" BODY=8BITMIME")
    driver.command("RCPT TO:<carol@example.net> NOTIFY=NEVER")

    assert driver.command("DATA") == [replies.START_DATA]
    assert driver.state is State.DATA
    assert_replies(driver.send("Subject: hi\r\n\r\nhello\r\n.\r\n"), "250 2.0.0")

    assert message(driver) == events.Message(
        Address("alice", "example.org", "example.org"),
        events.MailParams(body="8BITMIME"),
        [
            (Address("bob", "example.net", "example.net"), events.RcptParams()),
            (Address("carol", "example.net", "example.net"), events.RcptParams(())),
        ],
        b"Subject: hi\r\n\r\nhello\r\n",
        chunked=False,
    )
    assert driver.state is State.READY and driver.conn.transaction is None
    assert driver.conn.messages == 1


@pytest.mark.parametrize(
    "sent, content",
    [
        (b".\r\n", b""),
        (b"\r\n.\r\n", b"\r\n"),
        (b"..\r\n.\r\n", b".\r\n"),
        (b"...\r\n.\r\n", b"..\r\n"),
        (b"..x\r\n. y\r\n.\r\n", b".x\r\n y\r\n"),
        (b"a.\r\n.b\r\n.\r\n", b"a.\r\nb\r\n"),
        (b"..\r\n..\r\n..\r\n.\r\n", b".\r\n.\r\n.\r\n"),
        (b"x\r\n.\r\nNOOP\r\n", b"x\r\n"),  # ends at the first marker
    ],
    ids=[
        "empty",
        "blank-line",
        "lone-dot",
        "two-dots",
        "leading-dots",
        "inner-dots",
        "consecutive",
        "first-marker",
    ],
)
def test_data_undoes_dot_stuffing(sent: bytes, content: bytes) -> None:
    driver = in_rcpt()
    driver.command("DATA")

    driver.send(sent)

    assert message(driver).content == content


def test_data_end_marker_split_across_reads() -> None:
    driver = in_rcpt()
    driver.command("DATA")

    for piece in (b"hello\r", b"\n", b".", b"\r", b"\n"):
        assert driver.conn.state is State.DATA
        driver.send(piece)

    assert message(driver).content == b"hello\r\n"


def test_data_then_pipelined_commands() -> None:
    driver = in_rcpt()

    got = driver.send(b"DATA\r\nhi\r\n.\r\nNOOP\r\nMAIL FROM:<a@example.org>\r\n")

    assert_replies(
        got, replies.START_DATA, "250 2.0.0", replies.NOOP_OK, replies.SENDER_OK
    )


@pytest.mark.parametrize(
    "options, params, body, reply",
    [
        ({"max_message_size": 20}, "", b"x" * 19 + b"\r\n", replies.MESSAGE_TOO_BIG),
        ({"max_message_size": 20}, "", b"x" * 5000 + b"\r\n", replies.MESSAGE_TOO_BIG),
        ({}, "", b"x" * 999 + b"\r\n", replies.TEXT_LINE_TOO_LONG),
        ({}, "", b"nul\0\r\n", replies.NUL_IN_DATA),
        ({}, "", b"bare\nlf\r\n", replies.BARE_NEWLINE_DATA),
        ({}, "", b"bare\rcr\r\n", replies.BARE_NEWLINE_DATA),
        ({}, "", "café\r\n".encode(), replies.UNDECLARED_8BIT),
        ({}, " BODY=7BIT", "café\r\n".encode(), replies.UNDECLARED_8BIT),
    ],
    ids=[
        "too-big",
        "far-too-big",
        "line-999",
        "nul",
        "bare-lf",
        "bare-cr",
        "8bit-undeclared",
        "8bit-as-7bit",
    ],
)
def test_data_refused_at_the_end(
    options: dict[str, object], params: str, body: bytes, reply: Reply
) -> None:
    driver = in_rcpt(params, **options)
    assert driver.command("DATA") == [replies.START_DATA]

    assert driver.send(body + b".\r\n") == [reply]

    assert not any(isinstance(e, events.Message) for e in driver.last_events)
    assert driver.state is State.READY and driver.conn.transaction is None
    assert driver.command("NOOP") == [replies.NOOP_OK]


@pytest.mark.parametrize(
    "options, params, body, content",
    [
        ({"max_message_size": 20}, "", b"x" * 18 + b"\r\n", None),
        ({}, "", b"x" * 998 + b"\r\n", None),
        ({}, " BODY=8BITMIME", "café\r\n".encode(), None),
        ({}, " SMTPUTF8", "café\r\n".encode(), None),
        ({"undeclared_8bit": "accept"}, "", "café\r\n".encode(), None),
        ({"bare_newlines": "normalize"}, "", b"a\nb\rc\r\r\n", b"a\r\nb\r\nc\r\n\r\n"),
    ],
    ids=[
        "size-limit",
        "line-998",
        "8bitmime",
        "smtputf8",
        "8bit-accepted",
        "normalized",
    ],
)
def test_data_accepted_at_the_limits(
    options: dict[str, object], params: str, body: bytes, content: bytes | None
) -> None:
    driver = in_rcpt(params, **options)
    driver.command("DATA")

    assert_replies(driver.send(body + b".\r\n"), "250 2.0.0")

    assert message(driver).content == (body if content is None else content)


def test_refused_message_ends_the_transaction() -> None:
    driver = in_rcpt()
    driver.answer = refusing(events.Message)
    driver.command("DATA")

    assert driver.send(".\r\n") == [POLICY_NO]
    assert driver.state is State.READY and driver.conn.transaction is None
    assert driver.conn.messages == 0


@pytest.mark.parametrize(
    "setup, line, reply",
    [
        ([], "DATA", replies.NEED_HELO),
        (["EHLO c.example"], "DATA", replies.NEED_MAIL),
        (
            ["EHLO c.example", "MAIL FROM:<a@example.org>"],
            "DATA",
            replies.NO_VALID_RECIPIENTS,
        ),
        (
            ["EHLO c.example", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.org>"],
            "DATA x",
            replies.NO_ARGUMENTS,
        ),
    ],
    ids=["before-helo", "before-mail", "before-rcpt", "argument"],
)
def test_data_out_of_place(setup: list[str], line: str, reply: Reply) -> None:
    driver = CoreDriver()
    for command in setup:
        driver.command(command)

    assert driver.command(line) == [reply]
    assert driver.state is not State.DATA


def test_eof_inside_data_loses_the_message() -> None:
    driver = in_rcpt()
    driver.send("DATA\r\nhalf a message\r\n")

    driver.eof()

    assert driver.last_events == [events.Closed(by_peer=True, lost_message=True)]
    assert driver.state is State.CLOSED


# -- BDAT -----------------------------------------------------------------------


def test_bdat_chunks_make_one_message() -> None:
    driver = in_rcpt()

    assert_replies(driver.send(b"BDAT 5\r\nab\r\n."), OCTETS_RECEIVED)
    assert driver.state is State.MAIL
    assert_replies(driver.send(b"BDAT 9\r\n\r\nQUIT\r\n\r"), OCTETS_RECEIVED)
    assert_replies(driver.send(b"BDAT 1 LAST\r\n\n"), "250 2.0.0")

    event = message(driver)
    assert event.content == b"ab\r\n.\r\nQUIT\r\n\r\n"
    assert event.chunked
    assert driver.state is State.READY


def test_bdat_reports_octets_so_far() -> None:
    driver = in_rcpt()

    (first,) = driver.send(b"BDAT 3\r\nabc")
    (second,) = driver.send(b"BDAT 4\r\ndefg")

    assert first.text == "3 octets received"
    assert second.text == "7 octets received"


@pytest.mark.parametrize("line", ["BDAT 0 LAST", "BDAT 0 last", "bdat 00 LAST"])
def test_bdat_zero_last_ends_an_empty_message(line: str) -> None:
    driver = in_rcpt()

    assert_replies(driver.command(line), "250 2.0.0")
    assert message(driver).content == b""


def test_bdat_chunk_arrives_in_pieces() -> None:
    driver = in_rcpt()

    assert driver.send(b"BDAT 6 LAST\r\nab") == []
    assert driver.state is State.BDAT
    assert driver.send(b"cd") == []
    assert_replies(driver.send(b"\r\nNOOP\r\n"), "250 2.0.0", replies.NOOP_OK)
    assert message(driver).content == b"abcd\r\n"


@pytest.mark.parametrize(
    "setup, reply",
    [
        ([], replies.NEED_HELO),
        (["HELO client.example.org"], replies.UNKNOWN_COMMAND),
        (["EHLO client.example.org"], replies.NEED_MAIL),
        (
            ["EHLO client.example.org", "MAIL FROM:<a@example.org>"],
            replies.NO_VALID_RECIPIENTS,
        ),
    ],
    ids=["before-helo", "after-helo", "before-mail", "before-rcpt"],
)
def test_bdat_out_of_place_swallows_its_chunk(setup: list[str], reply: Reply) -> None:
    driver = CoreDriver()
    for line in setup:
        driver.command(line)

    # The chunk holds commands; they must be read as data and dropped
    # (RFC 3030 §2), so only the refusal and the NOOP after it answer.
    got = driver.send(b"BDAT 12 LAST\r\nQUIT\r\nRSET\r\nNOOP\r\n")

    assert got == [reply, replies.NOOP_OK]
    assert not driver.closed


def test_bdat_before_helo_stays_initial() -> None:
    driver = CoreDriver()

    driver.send(b"BDAT 3\r\nabc")

    assert driver.state is State.INITIAL


@pytest.mark.parametrize(
    "line",
    [
        "BDAT",
        "BDAT x",
        "BDAT -1",
        "BDAT 1 NOW",
        "BDAT 1 LAST more",
        "BDAT 1  LAST",
        "BDAT " + "9" * 19,
    ],
)
def test_bdat_syntax(line: str) -> None:
    driver = in_rcpt()

    assert driver.command(line) == [replies.BDAT_SYNTAX]
    assert driver.state is State.MAIL


def test_bdat_after_a_failed_chunk_needs_rset() -> None:
    driver = in_mail()
    assert driver.send(b"BDAT 2\r\nab") == [replies.NO_VALID_RECIPIENTS]
    driver.command("RCPT TO:<bob@example.net>")

    assert driver.send(b"BDAT 2 LAST\r\ncd") == [replies.BDAT_AFTER_FAILURE]

    driver.command("RSET")
    driver.command("MAIL FROM:<a@example.org>")
    driver.command("RCPT TO:<bob@example.net>")
    assert_replies(driver.send(b"BDAT 2 LAST\r\ncd"), "250 2.0.0")


def test_data_after_bdat_is_refused() -> None:
    driver = in_rcpt()
    driver.send(b"BDAT 2\r\nab")

    assert driver.command("DATA") == [replies.DATA_AFTER_BDAT]


def test_binarymime_needs_bdat() -> None:
    driver = in_rcpt(" BODY=BINARYMIME")

    assert driver.command("DATA") == [replies.DATA_WITH_BINARYMIME]

    content = bytes(range(256)) + b"\n.\n\r.\r"
    assert_replies(
        driver.send(b"BDAT %d LAST\r\n" % len(content) + content), "250 2.0.0"
    )
    assert message(driver).content == content


@pytest.mark.parametrize(
    "content, reply",
    [
        (b"bare\nlf\r\n", replies.BARE_NEWLINE_DATA),
        (b"nul\0\r\n", replies.NUL_IN_DATA),
        ("é\r\n".encode(), replies.UNDECLARED_8BIT),
    ],
    ids=["bare-lf", "nul", "8bit"],
)
def test_bdat_text_is_checked_like_data(content: bytes, reply: Reply) -> None:
    driver = in_rcpt()

    assert driver.send(b"BDAT %d LAST\r\n" % len(content) + content) == [reply]
    assert driver.state is State.READY


def test_bdat_too_big() -> None:
    driver = in_rcpt(max_message_size=10)

    assert_replies(driver.send(b"BDAT 6\r\n123456"), OCTETS_RECEIVED)
    assert driver.send(b"BDAT 5\r\n12345") == [replies.MESSAGE_TOO_BIG]
    assert driver.conn.transaction is None

    # The transaction is over; what follows is out of sequence.
    assert driver.send(b"BDAT 1 LAST\r\nx") == [replies.NEED_MAIL]


def test_eof_inside_bdat_loses_the_message() -> None:
    driver = in_rcpt()
    driver.send(b"BDAT 10 LAST\r\nabc")

    driver.eof()

    assert driver.last_events == [events.Closed(by_peer=True, lost_message=True)]


# -- RSET, NOOP, QUIT -----------------------------------------------------------


@pytest.mark.parametrize(
    "setup",
    [
        [],
        ["EHLO c.example"],
        ["EHLO c.example", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.org>"],
    ],
    ids=["initial", "ready", "transaction"],
)
def test_rset_forgets_the_transaction(setup: list[str]) -> None:
    driver = CoreDriver()
    for line in setup:
        driver.command(line)
    before = driver.conn.helo

    assert driver.command("RSET") == [replies.RESET_OK]

    assert driver.conn.transaction is None
    assert driver.conn.helo == before
    assert driver.state is (State.READY if before else State.INITIAL)


def test_rset_takes_no_argument() -> None:
    driver = in_rcpt()

    assert driver.command("RSET now") == [replies.NO_ARGUMENTS]
    assert driver.conn.transaction is not None


@pytest.mark.parametrize("line", ["NOOP", "noop", "NOOP whatever you like"])
def test_noop(line: str) -> None:
    driver = CoreDriver()

    assert driver.command(line) == [replies.NOOP_OK]


def test_quit_closes() -> None:
    driver = in_rcpt()

    assert driver.send("QUIT\r\nNOOP\r\n") == [replies.CLOSING]

    assert driver.last_events == [events.Closed(by_peer=False, lost_message=False)]
    assert driver.state is State.CLOSED
    assert driver.command("NOOP") == []


def test_quit_takes_no_argument() -> None:
    driver = CoreDriver()

    assert driver.command("QUIT now") == [replies.NO_ARGUMENTS]
    assert not driver.closed


def test_eof_after_pipelined_commands() -> None:
    driver = ready()
    driver.send("NOOP\r\nRSET\r\n")

    driver.eof()

    assert driver.last_events == [events.Closed(by_peer=True, lost_message=False)]


# -- VRFY, EXPN, HELP, ETRN -----------------------------------------------------


@pytest.mark.parametrize(
    "line, event",
    [
        ("VRFY bob", events.Vrfy("bob")),
        ("VRFY  <bob@example.net> ", events.Vrfy("<bob@example.net>")),
        ("EXPN staff", events.Expn("staff")),
        ("expn Staff List", events.Expn("Staff List")),
    ],
)
def test_vrfy_and_expn_go_to_the_driver_even_before_helo(
    line: str, event: events.Event
) -> None:
    driver = CoreDriver()

    assert driver.command(line) == [replies.CANNOT_VRFY]
    assert driver.last_events == [event]


@pytest.mark.parametrize(
    "line, reply",
    [
        ("VRFY", replies.VRFY_SYNTAX),
        ("VRFY  ", replies.VRFY_SYNTAX),
        ("EXPN", replies.EXPN_SYNTAX),
    ],
)
def test_vrfy_and_expn_need_an_argument(line: str, reply: Reply) -> None:
    assert CoreDriver().command(line) == [reply]


def test_help_lists_commands() -> None:
    (reply,) = CoreDriver().command("HELP")

    assert status(reply) == "214 2.0.0"
    assert reply.lines[0].split()[1:] == [
        "HELO",
        "EHLO",
        "MAIL",
        "RCPT",
        "DATA",
        "BDAT",
        "RSET",
        "NOOP",
        "QUIT",
        "VRFY",
        "EXPN",
        "HELP",
        "AUTH",
        "STARTTLS",
        "ETRN",
    ]


@pytest.mark.parametrize("verb", sorted(HELP_TEXT))
def test_help_for_each_command(verb: str) -> None:
    assert CoreDriver().command(f"HELP {verb.lower()}") == [
        Reply.of(214, "2.0.0", HELP_TEXT[verb])
    ]


def test_help_rcpt() -> None:
    (reply,) = CoreDriver().command("HELP RCPT")

    assert reply.text.startswith("RCPT TO:<recipient> [NOTIFY=")


def test_help_unknown_topic() -> None:
    (reply,) = CoreDriver().command("HELP " + "X" * 100)

    assert status(reply) == "504 5.5.4"
    assert len(reply.text) < 60


def test_etrn() -> None:
    driver = ready()

    (reply,) = driver.command("ETRN @example.org")

    assert reply.code == 458
    assert driver.last_events == [events.Etrn("@example.org")]


@pytest.mark.parametrize(
    "setup, line, reply",
    [
        ([], "ETRN example.org", replies.NEED_HELO),
        (["EHLO c.example"], "ETRN", replies.ETRN_SYNTAX),
        (
            ["EHLO c.example", "MAIL FROM:<a@example.org>"],
            "ETRN example.org",
            NOT_IN_TRANSACTION,
        ),
    ],
    ids=["before-helo", "no-argument", "in-transaction"],
)
def test_etrn_refused(setup: list[str], line: str, reply: Reply | str) -> None:
    driver = CoreDriver()
    for command in setup:
        driver.command(command)

    assert_replies(driver.command(line), reply)


# -- AUTH -----------------------------------------------------------------------

AUTH_OPTIONS = {"auth_enabled": True, "auth_without_tls": True}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    "lines, challenges, event",
    [
        (
            [f"AUTH PLAIN {PLAIN_ALICE}"],
            [],
            events.Auth("PLAIN", "", "alice", "secret"),
        ),
        (
            [f"auth plain {b64('admin' + chr(0) + 'alice' + chr(0) + 'secret')}"],
            [],
            events.Auth("PLAIN", "admin", "alice", "secret"),
        ),
        (
            ["AUTH PLAIN", PLAIN_ALICE],
            [Reply.of(334, "", "")],
            events.Auth("PLAIN", "", "alice", "secret"),
        ),
        (
            ["AUTH LOGIN", b64("alice"), b64("secret")],
            [Reply.of(334, "", "VXNlcm5hbWU6"), Reply.of(334, "", "UGFzc3dvcmQ6")],
            events.Auth("LOGIN", "", "alice", "secret"),
        ),
        (
            [f"AUTH LOGIN {b64('alice')}", b64("secret")],
            [Reply.of(334, "", "UGFzc3dvcmQ6")],
            events.Auth("LOGIN", "", "alice", "secret"),
        ),
    ],
    ids=["plain", "plain-authzid", "plain-empty-challenge", "login", "login-initial"],
)
def test_auth_succeeds(
    lines: list[str], challenges: list[Reply], event: events.Auth
) -> None:
    driver = ready(**AUTH_OPTIONS)

    got = [reply for line in lines for reply in driver.command(line)]

    assert got == [*challenges, replies.AUTH_OK]
    assert driver.events[-1] == event
    assert driver.conn.authenticated_as == "alice"
    assert driver.state is State.READY


@pytest.mark.parametrize(
    "lines, reply",
    [
        (
            [f"AUTH PLAIN {b64(chr(0) + 'alice' + chr(0) + 'wrong')}"],
            replies.AUTH_FAILED,
        ),
        (["AUTH PLAIN *"], replies.AUTH_CANCELLED),
        (["AUTH PLAIN", "*"], replies.AUTH_CANCELLED),
        (["AUTH LOGIN", b64("alice"), "*"], replies.AUTH_CANCELLED),
        (["AUTH PLAIN !!!!"], replies.AUTH_BAD_BASE64),
        (["AUTH LOGIN", "YWxpY2U"], replies.AUTH_BAD_BASE64),
        ([f"AUTH PLAIN {NOT_UTF8_B64}"], replies.AUTH_BAD_BASE64),
        ([f"AUTH PLAIN {b64('alice' + chr(0) + 'secret')}"], replies.AUTH_FAILED),
        ([f"AUTH PLAIN {b64(chr(0) + chr(0) + 'secret')}"], replies.AUTH_FAILED),
        (["AUTH PLAIN ="], replies.AUTH_FAILED),
        (["AUTH"], replies.AUTH_SYNTAX),
        (["AUTH PLAIN a b"], replies.AUTH_SYNTAX),
        (["AUTH CRAM-MD5"], replies.AUTH_UNKNOWN_MECH),
    ],
    ids=[
        "wrong-password",
        "cancel-initial",
        "cancel-plain",
        "cancel-login",
        "bad-base64",
        "login-bad-base64",
        "not-utf8",
        "plain-two-fields",
        "plain-no-user",
        "empty-response",
        "no-mechanism",
        "extra-argument",
        "unknown-mechanism",
    ],
)
def test_auth_fails(lines: list[str], reply: Reply) -> None:
    driver = ready(**AUTH_OPTIONS)

    got = [r for line in lines for r in driver.command(line)]

    assert got[-1] == reply
    assert all(r.code == 334 for r in got[:-1])
    assert driver.conn.authenticated_as is None
    assert driver.state is State.READY
    assert driver.command("NOOP") == [replies.NOOP_OK]


@pytest.mark.parametrize(
    "options, setup, reply",
    [
        (AUTH_OPTIONS, [], replies.NEED_HELO),
        (AUTH_OPTIONS, ["HELO c.example"], replies.AUTH_NOT_AVAILABLE),
        ({"auth_enabled": True}, ["EHLO c.example"], replies.AUTH_NOT_AVAILABLE),
        ({"auth_without_tls": True}, ["EHLO c.example"], replies.AUTH_NOT_AVAILABLE),
        (
            AUTH_OPTIONS,
            ["EHLO c.example", "MAIL FROM:<a@example.org>"],
            replies.AUTH_IN_TRANSACTION,
        ),
        (
            AUTH_OPTIONS,
            ["EHLO c.example", f"AUTH PLAIN {PLAIN_ALICE}"],
            replies.ALREADY_AUTHENTICATED,
        ),
    ],
    ids=[
        "before-helo",
        "after-helo",
        "before-tls",
        "disabled",
        "in-transaction",
        "twice",
    ],
)
def test_auth_out_of_place(
    options: dict[str, bool], setup: list[str], reply: Reply
) -> None:
    driver = CoreDriver(ServerOptions(**options))  # type: ignore[arg-type]
    for line in setup:
        driver.command(line)

    assert driver.command(f"AUTH PLAIN {PLAIN_ALICE}") == [reply]


def test_auth_offered_after_tls() -> None:
    driver = ready(auth_enabled=True, tls_active=True)

    assert driver.command(f"AUTH PLAIN {PLAIN_ALICE}") == [replies.AUTH_OK]


def test_auth_response_may_exceed_the_command_limit() -> None:
    # RFC 4954 §4: 12288 octets for an AUTH line, not 512.
    password = "p" * 3000
    driver = CoreDriver(
        ServerOptions(**AUTH_OPTIONS), answer=AcceptEverything({"alice": password})
    )
    driver.command("EHLO c.example")

    driver.command("AUTH PLAIN")
    assert driver.command(b64(f"\0alice\0{password}")) == [replies.AUTH_OK]


# -- STARTTLS -------------------------------------------------------------------

TLS_OPTIONS = {"tls_available": True, "auth_enabled": True}


def test_starttls_resets_the_session() -> None:
    driver = ready(**TLS_OPTIONS)
    driver.auto_tls = False

    assert driver.command("STARTTLS") == [replies.READY_TLS]
    assert driver.state is State.TLS_PENDING
    assert driver.last_events == [events.StartTls()]

    driver.conn.tls_started()
    assert driver.state is State.INITIAL
    assert driver.conn.helo is None and driver.conn.options.tls_active
    assert driver.command("MAIL FROM:<a@example.org>") == [replies.NEED_HELO]
    (ehlo,) = driver.command("EHLO client.example.org")
    assert "STARTTLS" not in ehlo.lines
    assert "AUTH PLAIN LOGIN" in ehlo.lines and "REQUIRETLS" in ehlo.lines
    assert driver.command("STARTTLS") == [replies.TLS_ACTIVE]


def test_starttls_forgets_authentication() -> None:
    driver = ready(tls_available=True, **AUTH_OPTIONS)
    driver.command(f"AUTH PLAIN {PLAIN_ALICE}")

    driver.command("STARTTLS")

    assert driver.conn.authenticated_as is None


@pytest.mark.parametrize(
    "options, setup, line, reply",
    [
        ({}, ["EHLO c.example"], "STARTTLS", replies.TLS_NOT_AVAILABLE),
        (
            {"tls_available": True, "tls_active": True},
            ["EHLO c.example"],
            "STARTTLS",
            replies.TLS_ACTIVE,
        ),
        (
            {"tls_available": True},
            ["EHLO c.example"],
            "STARTTLS now",
            replies.NO_ARGUMENTS,
        ),
        ({"tls_available": True}, [], "STARTTLS", replies.NEED_HELO),
        (
            {"tls_available": True},
            ["EHLO c.example", "MAIL FROM:<a@example.org>"],
            "STARTTLS",
            NOT_IN_TRANSACTION,
        ),
    ],
    ids=["unavailable", "active", "argument", "before-helo", "in-transaction"],
)
def test_starttls_refused(
    options: dict[str, bool], setup: list[str], line: str, reply: Reply | str
) -> None:
    driver = CoreDriver(ServerOptions(**options))  # type: ignore[arg-type]
    for command in setup:
        driver.command(command)

    assert_replies(driver.command(line), reply)
    assert driver.state is not State.TLS_PENDING


def test_starttls_declined_by_driver_keeps_pipelined_commands() -> None:
    driver = ready(tls_available=True)
    driver.answer = refusing(events.StartTls)

    got = driver.send("STARTTLS\r\nNOOP\r\n")

    assert got == [POLICY_NO, replies.NOOP_OK]
    assert driver.state is State.READY


def test_eof_before_the_handshake_closes() -> None:
    driver = ready(tls_available=True)
    driver.auto_tls = False
    driver.command("STARTTLS")

    driver.eof()

    assert driver.last_events == [events.Closed(by_peer=True)]


def test_tls_started_without_starttls_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        ready().conn.tls_started()


# -- bad command lines ----------------------------------------------------------


@pytest.mark.parametrize(
    "line", ["FROB", "", " NOOP", "NOOPX", "MAILFROM:<a@b>", "STARTTLSX", "DATA\tx"]
)
def test_unknown_command(line: str) -> None:
    driver = CoreDriver()

    assert driver.command(line) == [replies.UNKNOWN_COMMAND]
    assert driver.last_events == []


def test_command_line_limit_is_512_with_crlf() -> None:
    driver = CoreDriver()
    longest = "NOOP " + "x" * (COMMAND_LINE_LIMIT - 7)

    assert driver.command(longest) == [replies.NOOP_OK]
    assert driver.command(longest + "x") == [replies.LINE_TOO_LONG]


@pytest.mark.parametrize("size", [513, 600, 5000, 100_000])
def test_overlong_line_is_refused_once_and_session_continues(size: int) -> None:
    driver = ready()
    line = b"MAIL FROM:<" + b"a" * size + b"@example.org>\r\n"

    # In pieces, so the core sees the line grow past the limit.
    got = [r for i in range(0, len(line), 700) for r in driver.send(line[i : i + 700])]

    assert got == [replies.LINE_TOO_LONG]
    assert driver.conn.transaction is None
    assert driver.command("MAIL FROM:<a@example.org>") == [replies.SENDER_OK]


@pytest.mark.parametrize(
    "data, reply",
    [
        (b"NOOP\n", replies.BARE_LF_COMMAND),
        (b"\n", replies.BARE_LF_COMMAND),
        (b"NO\rOP\r\n", replies.BARE_LF_COMMAND),
        (b"NOOP\r\r\n", replies.BARE_LF_COMMAND),
        (b"NOOP\0\r\n", replies.NUL_IN_COMMAND),
        (b"\0\r\n", replies.NUL_IN_COMMAND),
        (b"MAIL FROM:<\xff@example.org>\r\n", NOT_UTF8),
    ],
    ids=["bare-lf", "lone-lf", "inner-cr", "cr-cr-lf", "nul", "lone-nul", "not-utf8"],
)
def test_malformed_command_line(data: bytes, reply: Reply | str) -> None:
    driver = ready()

    assert_replies(driver.send(data), reply)
    assert driver.last_events == []
    assert driver.command("NOOP") == [replies.NOOP_OK]


@pytest.mark.parametrize(
    "setup, line, reply",
    [
        # (commands before, command, reply): RFC 5321 §4.1.4 ordering.
        ([], "MAIL FROM:<a@example.org>", replies.NEED_HELO),
        ([], "RCPT TO:<a@example.org>", replies.NEED_HELO),
        ([], "DATA", replies.NEED_HELO),
        ([], "ETRN example.org", replies.NEED_HELO),
        (["EHLO c.example"], "RCPT TO:<a@example.org>", replies.NEED_MAIL),
        (["EHLO c.example"], "DATA", replies.NEED_MAIL),
        (
            ["EHLO c.example", "MAIL FROM:<a@example.org>"],
            "MAIL FROM:<b@example.org>",
            replies.NESTED_MAIL,
        ),
        (
            ["EHLO c.example", "MAIL FROM:<a@example.org>"],
            "DATA",
            replies.NO_VALID_RECIPIENTS,
        ),
    ],
)
def test_sequence_errors(setup: list[str], line: str, reply: Reply) -> None:
    driver = CoreDriver()
    for command in setup:
        driver.command(command)
    state = driver.state

    assert driver.command(line) == [reply]
    assert driver.state is state


def test_hard_error_limit_closes_with_421() -> None:
    driver = ready(hard_error_limit=3)

    got = driver.send("FROB\r\nMAIL\r\nRCPT TO:<a@example.org>\r\nNOOP\r\n")

    assert_replies(
        got,
        replies.UNKNOWN_COMMAND,
        replies.MAIL_SYNTAX,
        replies.NEED_MAIL,
        TOO_MANY_ERRORS,
    )
    assert driver.last_events == [events.Closed(by_peer=False)]
    assert driver.state is State.CLOSED
    assert driver.command("NOOP") == []


def test_hard_error_limit_counts_policy_refusals() -> None:
    driver = in_mail(hard_error_limit=2)
    driver.answer = refusing(events.RcptTo)

    got = driver.send("RCPT TO:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n")

    assert_replies(got, POLICY_NO, POLICY_NO, TOO_MANY_ERRORS)
    assert driver.closed


# -- input split at every byte boundary -----------------------------------------
#
# Reading must not depend on how TCP cuts the stream: each transcript,
# fed whole, one byte at a time, and in two pieces at every position,
# must give the same events and the same output. A few conversations
# that no transcript holds are added for the awkward spots.

def _conversations() -> list[object]:
    cases: list[object] = []
    for transcript in load_transcripts(TRANSCRIPTS):
        cases.append(
            pytest.param(
                transcript.client_bytes,
                transcript.options,
                id=transcript.name,
            )
        )
    cases.append(
        pytest.param(
            b"EHLO a.example\r\nMAIL FROM:<a@example.org>\r\n"
            b"RCPT TO:<b@example.org>\r\n"
            b"DATA\r\n\r\n..\r\n.x\r\n\r\n.\r\r\n.\n\r\n.\r\n"
            b"BDAT 5\r\n\r\n.\r\nBDAT 0 LAST\r\nQUIT\r\n",
            {"bare_newlines": "normalize"},
            id="marker-lookalikes",
        )
    )
    cases.append(
        pytest.param(
            b"EHLO a.example\r\nNOOP "
            + b"x" * 600
            + b"\r\nAUTH PLAIN\r\n"
            + b"A" * 700
            + b"\r\nNOOP\n\0\r\nQUIT\r\n",
            {"auth": True, "auth_without_tls": True},
            id="long-lines",
        )
    )
    return cases


def _feed(client: bytes, options: dict[str, object], chunks: list[bytes]) -> tuple:
    transcript = Transcript("split", [], dict(options))
    replay = replay_core(transcript, chunks)
    return replay.events, replay.lines


@pytest.mark.parametrize("client, options", _conversations())
def test_byte_by_byte_equals_whole(client: bytes, options: dict[str, object]) -> None:
    whole = _feed(client, options, [client])

    assert (
        _feed(client, options, [client[i : i + 1] for i in range(len(client))]) == whole
    )


@pytest.mark.parametrize("client, options", _conversations())
def test_every_two_piece_split_equals_whole(
    client: bytes, options: dict[str, object]
) -> None:
    whole = _feed(client, options, [client])

    for cut in range(1, len(client)):
        split = _feed(client, options, [client[:cut], client[cut:]])
        assert split == whole, f"differs when cut at {cut}: {client[cut - 20 : cut]!r}"


def test_message_of_exactly_the_size_limit_however_split() -> None:
    body = b"x" * 48 + b"\r\n"  # 50 octets with its CRLF: exactly the limit.
    for cut in range(len(body) + 1, len(body) + 3):
        driver = in_rcpt(max_message_size=50)
        data = b"DATA\r\n" + body + b".\r\n"
        head, tail = data[: 6 + cut], data[6 + cut :]

        got = driver.send(head) + driver.send(tail)

        assert_replies(got, replies.START_DATA, "250 2.0.0")
