"""The sans-I/O SMTP client core: bytes in, events and bytes out.

Each test plays the server by hand: it feeds the core the bytes a server
would send and checks the bytes the core wants written, as h11's tests
do. No sockets anywhere.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postroom.errors import LocalProtocolError
from postroom.protocol.smtp.client import (
    NEED_DATA,
    PIPELINED_BDAT_LIMIT,
    REPLY_LINE_LIMIT,
    REPLY_LINES_LIMIT,
    AuthDone,
    BadReply,
    Capabilities,
    ClientConnection,
    Closed,
    EhloDone,
    Event,
    Greeting,
    MailRequest,
    QuitDone,
    RcptRequest,
    ReplyReader,
    RsetDone,
    StartTlsDone,
    State,
    TransactionDone,
    dot_stuff,
    mail_command,
    rcpt_command,
)
from postroom.protocol.smtp.events import _Sentinel
from postroom.protocol.smtp.replies import Reply

GREETING = b"220 mx.test ESMTP\r\n"
EHLO_FULL = (
    b"250-mx.test Hello\r\n"
    b"250-PIPELINING\r\n"
    b"250-SIZE 10240000\r\n"
    b"250-8BITMIME\r\n"
    b"250-SMTPUTF8\r\n"
    b"250-CHUNKING\r\n"
    b"250-BINARYMIME\r\n"
    b"250-DSN\r\n"
    b"250-STARTTLS\r\n"
    b"250-AUTH PLAIN LOGIN\r\n"
    b"250-REQUIRETLS\r\n"
    b"250 ENHANCEDSTATUSCODES\r\n"
)
EHLO_PLAIN = b"250-mx.test\r\n250 8BITMIME\r\n"  # no PIPELINING

SENDER_OK = b"250 2.1.0 Ok\r\n"
RCPT_OK = b"250 2.1.5 Ok\r\n"
RCPT_UNKNOWN = b"550 5.1.1 No such user\r\n"
RCPT_LATER = b"450 4.2.1 Try later\r\n"
GO_AHEAD = b"354 End data with <CR><LF>.<CR><LF>\r\n"
QUEUED = b"250 2.0.0 Ok: queued as 1234\r\n"
NO_RECIPIENTS = b"554 5.5.1 No valid recipients\r\n"
SHUTTING_DOWN = b"421 4.3.2 Shutting down\r\n"

MESSAGE = b"Subject: hi\r\n\r\nHello\r\n"


def events(conn: ClientConnection, data: bytes = b"") -> list[Event]:
    """Feed *data* (if any), then every event up to NEED_DATA."""
    if data:
        conn.receive_data(data)
    out: list[Event] = []
    while True:
        event = conn.next_event()
        if isinstance(event, _Sentinel):
            assert event is NEED_DATA
            return out
        out.append(event)


def bytewise(conn: ClientConnection, data: bytes) -> list[Event]:
    """Feed *data* one octet at a time, collecting every event."""
    out: list[Event] = []
    for i in range(len(data)):
        out += events(conn, data[i : i + 1])
    return out


def connected(ehlo: bytes = EHLO_FULL) -> ClientConnection:
    """A core past the greeting and EHLO."""
    conn = ClientConnection()
    assert events(conn, GREETING) == [Greeting(Reply.of(220, "", "mx.test ESMTP"))]
    conn.ehlo("client.test")
    assert conn.data_to_send() == b"EHLO client.test\r\n"
    (done,) = events(conn, ehlo)
    assert isinstance(done, EhloDone) and done.reply.code == 250
    assert conn.ready
    return conn


def rcpts(*addresses: str) -> list[RcptRequest]:
    return [RcptRequest(a) for a in addresses]


def transaction_done(evs: list[Event]) -> TransactionDone:
    (done,) = [e for e in evs if isinstance(e, TransactionDone)]
    return done


# -- replies ------------------------------------------------------------


def read_all(data: bytes) -> list[Reply]:
    reader = ReplyReader()
    reader.feed(data)
    found = []
    while (reply := reader.next_reply()) is not None:
        found.append(reply)
    return found


def test_single_line_reply_with_enhanced_code() -> None:
    assert read_all(b"250 2.1.5 Ok\r\n") == [Reply.of(250, "2.1.5", "Ok")]


def test_multi_line_reply_strips_enhanced_code_from_every_line() -> None:
    (reply,) = read_all(b"550-5.7.1 Go away\r\n550-5.7.1 far away\r\n550 5.7.1 now\r\n")
    assert reply == Reply(550, "5.7.1", ("Go away", "far away", "now"))


def test_enhanced_code_of_another_class_stays_text() -> None:
    # RFC 3463 §2: the class must agree with the basic code.
    (reply,) = read_all(b"250 5.1.1 odd\r\n")
    assert reply == Reply(250, "", ("5.1.1 odd",))


def test_no_enhanced_code_in_354_or_without_one() -> None:
    assert read_all(GO_AHEAD)[0].enhanced == ""
    assert read_all(b"250 Ok\r\n") == [Reply(250, "", ("Ok",))]
    assert read_all(b"250 2.0.0\r\n") == [Reply(250, "2.0.0", ("",))]


def test_bare_code_and_bare_lf_are_accepted() -> None:
    assert read_all(b"250\n") == [Reply(250, "", ("",))]
    assert read_all(b"250-a\n250 b\n") == [Reply(250, "", ("a", "b"))]


@pytest.mark.parametrize(
    "line",
    [
        b"hello\r\n",
        b"25\r\n",
        b"2500 x\r\n",
        b"250x\r\n",
        b"650 too high\r\n",
        b"150 too low\r\n",
        b"\x00\x01\x02\r\n",
    ],
)
def test_malformed_lines_are_refused(line: bytes) -> None:
    with pytest.raises(BadReply):
        read_all(line)


def test_code_change_inside_multi_line_reply_is_refused() -> None:
    with pytest.raises(BadReply, match="code changed"):
        read_all(b"250-a\r\n251 b\r\n")


def test_overlong_line_is_refused_before_its_end() -> None:
    reader = ReplyReader()
    reader.feed(b"250 " + b"x" * REPLY_LINE_LIMIT)
    with pytest.raises(BadReply, match="too long"):
        reader.next_reply()


def test_endless_multi_line_reply_is_refused() -> None:
    with pytest.raises(BadReply, match="too many lines"):
        read_all(b"250-x\r\n" * (REPLY_LINES_LIMIT + 1))


@given(st.binary(max_size=300))
def test_reader_only_ever_raises_bad_reply(data: bytes) -> None:
    reader = ReplyReader()
    reader.feed(data)
    try:
        while reader.next_reply() is not None:
            pass
    except BadReply:
        pass


# -- capabilities -------------------------------------------------------


def test_capabilities_from_a_full_ehlo_reply() -> None:
    (reply,) = read_all(EHLO_FULL)
    caps = Capabilities.from_ehlo(reply)
    assert caps == Capabilities(
        esmtp=True,
        pipelining=True,
        size=10240000,
        eightbitmime=True,
        smtputf8=True,
        chunking=True,
        binarymime=True,
        dsn=True,
        starttls=True,
        enhancedstatuscodes=True,
        requiretls=True,
        auth=("PLAIN", "LOGIN"),
        keywords=caps.keywords,
    )
    assert caps.keywords[:3] == ("PIPELINING", "SIZE", "8BITMIME")


def test_capabilities_odd_forms() -> None:
    # Lower case, SIZE without a value, the old "AUTH=" form next to the
    # new one, and smtp-sink's empty last line.
    (reply,) = read_all(
        b"250-mx.test\r\n250-size\r\n250-AUTH=LOGIN\r\n250-AUTH PLAIN login\r\n"
        b"250-pipelining\r\n250 \r\n"
    )
    caps = Capabilities.from_ehlo(reply)
    assert caps.size == 0 and caps.pipelining
    assert caps.auth == ("LOGIN", "PLAIN")
    assert not caps.eightbitmime and not caps.starttls


def test_nothing_offered_yields_no_size() -> None:
    (reply,) = read_all(b"250 mx.test\r\n")
    assert Capabilities.from_ehlo(reply) == Capabilities(esmtp=True)


# -- greeting and EHLO --------------------------------------------------


def test_greeting_split_at_every_byte() -> None:
    data = b"220-mx.test ESMTP\r\n220 no UCE\r\n"
    for cut in range(1, len(data)):
        conn = ClientConnection()
        assert events(conn, data[:cut]) == []
        (greeting,) = events(conn, data[cut:])
        assert greeting == Greeting(Reply(220, "", ("mx.test ESMTP", "no UCE")))
        assert conn.state is State.INITIAL


def test_554_greeting_then_quit() -> None:
    conn = ClientConnection()
    (greeting,) = events(conn, b"554 5.7.1 No service for you\r\n")
    assert isinstance(greeting, Greeting) and greeting.reply.code == 554
    conn.quit()
    assert conn.data_to_send() == b"QUIT\r\n"
    assert events(conn, b"221 2.0.0 Bye\r\n") == [
        QuitDone(Reply.of(221, "2.0.0", "Bye")),
        Closed(Reply.of(221, "2.0.0", "Bye")),
    ]
    assert conn.closed


def test_421_greeting_closes() -> None:
    conn = ClientConnection()
    greeting, closed = events(conn, b"421 4.7.0 Too busy\r\n")
    assert isinstance(greeting, Greeting) and closed == Closed(greeting.reply)
    assert conn.closed


def test_eof_before_greeting() -> None:
    conn = ClientConnection()
    conn.receive_data(b"")
    greeting, closed = events(conn)
    assert isinstance(greeting, Greeting) and greeting.reply.code == 421
    assert greeting.reply.enhanced == "4.4.2"
    assert closed == Closed(greeting.reply)


def test_ehlo_reply_split_at_every_byte() -> None:
    conn = ClientConnection()
    events(conn, GREETING)
    conn.ehlo("client.test")
    (done,) = bytewise(conn, EHLO_FULL)
    assert isinstance(done, EhloDone) and done.extended
    assert done.capabilities.pipelining and conn.capabilities.chunking


def test_helo_after_ehlo_refused() -> None:
    conn = ClientConnection()
    events(conn, GREETING)
    conn.ehlo("client.test")
    conn.data_to_send()
    (done,) = events(conn, b"502 5.5.1 Command not implemented\r\n")
    assert isinstance(done, EhloDone) and done.capabilities == Capabilities()
    assert conn.state is State.INITIAL
    conn.helo("client.test")
    assert conn.data_to_send() == b"HELO client.test\r\n"
    (done,) = events(conn, b"250 mx.test\r\n")
    assert isinstance(done, EhloDone) and not done.extended
    assert conn.ready and not conn.capabilities.esmtp


@pytest.mark.parametrize("name", ["", "a b", "a\r\nMAIL FROM:<x>"])
def test_bad_helo_names_are_refused(name: str) -> None:
    conn = ClientConnection()
    events(conn, GREETING)
    with pytest.raises(LocalProtocolError):
        conn.ehlo(name)


def test_commands_out_of_turn_are_local_errors() -> None:
    conn = ClientConnection()
    with pytest.raises(LocalProtocolError):
        conn.ehlo("client.test")  # before the greeting
    conn = connected()
    conn.rset()
    with pytest.raises(LocalProtocolError):
        conn.rset()  # one operation at a time
    with pytest.raises(LocalProtocolError):
        conn.tls_started()


# -- STARTTLS -----------------------------------------------------------


def test_starttls_drops_injected_cleartext_and_forgets_capabilities() -> None:
    conn = connected()
    conn.starttls()
    assert conn.data_to_send() == b"STARTTLS\r\n"
    # A man in the middle appends a reply to the 220 in the same packet.
    (done,) = events(conn, b"220 2.0.0 Ready\r\n250 2.1.0 injected\r\n")
    assert isinstance(done, StartTlsDone) and done.ready
    assert conn.state.name == "TLS_PENDING"
    assert events(conn, b"250 more injected\r\n") == []
    conn.tls_started()
    assert conn.state is State.INITIAL and conn.capabilities == Capabilities()
    conn.ehlo("client.test")
    assert conn.data_to_send() == b"EHLO client.test\r\n"
    (done,) = events(conn, EHLO_PLAIN)
    assert isinstance(done, EhloDone) and done.capabilities.eightbitmime


def test_starttls_refused_keeps_the_session() -> None:
    conn = connected()
    conn.starttls()
    (done,) = events(conn, b"454 4.7.0 TLS not available\r\n")
    assert isinstance(done, StartTlsDone) and not done.ready
    assert conn.ready and conn.capabilities.starttls


def test_starttls_needs_the_offer() -> None:
    conn = connected(EHLO_PLAIN)
    with pytest.raises(LocalProtocolError):
        conn.starttls()


# -- AUTH ---------------------------------------------------------------


def test_auth_plain_with_initial_response() -> None:
    conn = connected()
    conn.auth("alice", "secret")
    assert conn.data_to_send() == b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n"
    (done,) = events(conn, b"235 2.7.0 Authentication successful\r\n")
    assert done == AuthDone(Reply.of(235, "2.7.0", "Authentication successful"))
    assert conn.ready


def test_auth_login_when_only_login_is_offered() -> None:
    conn = connected(b"250-mx.test\r\n250 AUTH LOGIN\r\n")
    conn.auth("alice", "secret")
    assert conn.data_to_send() == b"AUTH LOGIN\r\n"
    assert events(conn, b"334 VXNlcm5hbWU6\r\n") == []
    assert conn.data_to_send() == b"YWxpY2U=\r\n"
    assert events(conn, b"334 UGFzc3dvcmQ6\r\n") == []
    assert conn.data_to_send() == b"c2VjcmV0\r\n"
    (done,) = events(conn, b"535 5.7.8 Authentication credentials invalid\r\n")
    assert isinstance(done, AuthDone) and done.reply.code == 535


def test_auth_cancels_an_unexpected_challenge() -> None:
    conn = connected()
    conn.auth("alice", "secret")
    conn.data_to_send()
    assert events(conn, b"334 \r\n") == []
    assert conn.data_to_send() == b"*\r\n"
    (done,) = events(conn, b"501 5.7.0 Authentication cancelled\r\n")
    assert isinstance(done, AuthDone) and done.reply.code == 501


def test_auth_needs_a_known_mechanism() -> None:
    conn = connected(b"250-mx.test\r\n250 AUTH CRAM-MD5\r\n")
    with pytest.raises(LocalProtocolError):
        conn.auth("alice", "secret")


# -- commands and parameters -------------------------------------------


FULL = Capabilities.from_ehlo(read_all(EHLO_FULL)[0])
BARE = Capabilities(esmtp=True)


def test_mail_parameters_when_offered() -> None:
    mail = MailRequest(
        "a@example.test",
        size=1234,
        body="8BITMIME",
        smtputf8=True,
        ret="HDRS",
        envid="id+1=x y",
        requiretls=True,
    )
    assert mail_command(mail, FULL) == (
        b"MAIL FROM:<a@example.test> SIZE=1234 BODY=8BITMIME SMTPUTF8 RET=HDRS"
        b" ENVID=id+2B1+3Dx+20y REQUIRETLS\r\n"
    )


def test_mail_leaves_out_what_is_not_offered() -> None:
    mail = MailRequest("", size=1234, body="7BIT", ret="FULL", envid="x")
    assert mail_command(mail, BARE) == b"MAIL FROM:<>\r\n"


@pytest.mark.parametrize(
    "mail",
    [
        MailRequest("a@example.test", body="8BITMIME"),
        MailRequest("a@example.test", body="BINARYMIME"),
        MailRequest("a@example.test", smtputf8=True),
        MailRequest("a@example.test", requiretls=True),
        MailRequest("ü@example.test"),
        MailRequest("a@example.test>\r\nRCPT TO:<b@example.test"),
    ],
)
def test_mail_refuses_what_the_server_cannot_take(mail: MailRequest) -> None:
    with pytest.raises(LocalProtocolError):
        mail_command(mail, BARE)


def test_rcpt_dsn_parameters() -> None:
    rcpt = RcptRequest("b@example.test", ("SUCCESS", "FAILURE"), "rfc822;b+x@ex.test")
    assert rcpt_command(rcpt, FULL, False) == (
        b"RCPT TO:<b@example.test> NOTIFY=SUCCESS,FAILURE"
        b" ORCPT=rfc822;b+2Bx@ex.test\r\n"
    )
    never = RcptRequest("b@example.test", ())
    assert rcpt_command(never, FULL, False).endswith(b" NOTIFY=NEVER\r\n")
    assert rcpt_command(rcpt, BARE, False) == b"RCPT TO:<b@example.test>\r\n"


def test_utf8_recipient_needs_smtputf8_in_mail() -> None:
    rcpt = RcptRequest("ü@example.test")
    assert rcpt_command(rcpt, FULL, True) == "RCPT TO:<ü@example.test>\r\n".encode()
    with pytest.raises(LocalProtocolError):
        rcpt_command(rcpt, FULL, False)


@pytest.mark.parametrize(
    ("content", "wire"),
    [
        (b"a\r\n.b\r\n..c\r\n", b"a\r\n..b\r\n...c\r\n.\r\n"),
        (b".\r\n", b"..\r\n.\r\n"),
        (b"no final newline", b"no final newline\r\n.\r\n"),
        (b"", b".\r\n"),
        # Bare line ends become CRLF, so "\n.\n" cannot end DATA early.
        (b"a\n.\nb\r.\rc", b"a\r\n..\r\nb\r\n..\r\nc\r\n.\r\n"),
    ],
)
def test_dot_stuffing(content: bytes, wire: bytes) -> None:
    assert dot_stuff(content) == wire


# -- transactions with PIPELINING ---------------------------------------


def test_pipelined_transaction_sends_one_group_then_the_text() -> None:
    conn = connected()
    conn.send_transaction(
        MailRequest("a@example.test", size=len(MESSAGE)),
        rcpts("b@example.test", "c@example.test"),
        MESSAGE,
    )
    assert conn.data_to_send() == (
        b"MAIL FROM:<a@example.test> SIZE=22\r\n"
        b"RCPT TO:<b@example.test>\r\n"
        b"RCPT TO:<c@example.test>\r\n"
        b"DATA\r\n"
    )
    # Every reply of the group arrives at once.
    assert events(conn, SENDER_OK + RCPT_OK + RCPT_OK + GO_AHEAD) == []
    assert conn.data_to_send() == dot_stuff(MESSAGE)
    assert conn.awaiting_data_end
    done = transaction_done(events(conn, QUEUED))
    queued = Reply.of(250, "2.0.0", "Ok: queued as 1234")
    assert done.per_recipient == (queued, queued)
    assert conn.ready and not conn.needs_reset


def test_pipelined_replies_split_at_every_byte() -> None:
    replies = SENDER_OK + RCPT_UNKNOWN + RCPT_OK + GO_AHEAD
    for cut in range(1, len(replies)):
        conn = connected()
        conn.send_transaction(
            MailRequest("a@example.test"), rcpts("b@x.test", "c@x.test"), MESSAGE
        )
        conn.data_to_send()
        assert events(conn, replies[:cut]) == []
        assert events(conn, replies[cut:]) == []
        assert conn.data_to_send() == dot_stuff(MESSAGE)
        done = transaction_done(events(conn, QUEUED))
        assert [r.code for r in done.per_recipient] == [550, 250]


def test_partial_recipient_failures() -> None:
    conn = connected()
    conn.send_transaction(
        MailRequest("a@example.test"),
        rcpts("b@x.test", "c@x.test", "d@x.test"),
        MESSAGE,
    )
    conn.data_to_send()
    evs = events(conn, SENDER_OK + RCPT_UNKNOWN + RCPT_OK + RCPT_LATER + GO_AHEAD)
    assert evs == []
    assert conn.data_to_send() == dot_stuff(MESSAGE)
    done = transaction_done(events(conn, QUEUED))
    assert [str(r.enhanced) for r in done.per_recipient] == ["5.1.1", "2.0.0", "4.2.1"]
    assert [r.code for r in done.rcpt_replies] == [550, 250, 450]


def test_mail_rejected_decides_every_recipient() -> None:
    conn = connected()
    conn.send_transaction(
        MailRequest("a@example.test"), rcpts("b@x.test", "c@x.test"), MESSAGE
    )
    conn.data_to_send()
    need_mail = b"503 5.5.1 Need MAIL before RCPT\r\n"
    refused = b"550 5.7.1 Sender refused\r\n"
    done = transaction_done(
        events(conn, refused + need_mail * 2 + b"503 5.5.1 Need MAIL\r\n")
    )
    assert conn.data_to_send() == b""  # no text, no dot
    assert done.mail_reply == Reply.of(550, "5.7.1", "Sender refused")
    assert done.per_recipient == (done.mail_reply, done.mail_reply)
    assert not conn.needs_reset


def test_no_recipient_accepted_and_data_refused() -> None:
    conn = connected()
    conn.send_transaction(MailRequest("a@x.test"), rcpts("b@x.test"), MESSAGE)
    conn.data_to_send()
    done = transaction_done(events(conn, SENDER_OK + RCPT_UNKNOWN + NO_RECIPIENTS))
    assert conn.data_to_send() == b""
    assert done.per_recipient == (Reply.of(550, "5.1.1", "No such user"),)
    # MAIL stands at the server: the next transaction must RSET first.
    assert conn.needs_reset
    with pytest.raises(LocalProtocolError):
        conn.send_transaction(MailRequest("a@x.test"), rcpts("b@x.test"), MESSAGE)
    conn.rset()
    assert conn.data_to_send() == b"RSET\r\n"
    assert events(conn, b"250 2.0.0 Ok\r\n") == [RsetDone(Reply.of(250, "2.0.0", "Ok"))]
    assert not conn.needs_reset and conn.ready


def test_no_recipient_accepted_but_data_goes_ahead() -> None:
    # RFC 2920 §3.1: a server may say 354 anyway; send only the dot.
    conn = connected()
    conn.send_transaction(MailRequest("a@x.test"), rcpts("b@x.test"), MESSAGE)
    conn.data_to_send()
    assert events(conn, SENDER_OK + RCPT_UNKNOWN + GO_AHEAD) == []
    assert conn.data_to_send() == b".\r\n"
    done = transaction_done(events(conn, b"554 5.5.1 No valid recipients\r\n"))
    assert done.per_recipient[0].code == 550 and done.data_reply is None
    assert conn.ready and not conn.needs_reset


def test_data_refused_after_accepted_recipients() -> None:
    conn = connected()
    conn.send_transaction(MailRequest("a@x.test"), rcpts("b@x.test"), MESSAGE)
    conn.data_to_send()
    done = transaction_done(
        events(conn, SENDER_OK + RCPT_OK + b"451 4.3.0 Try later\r\n")
    )
    assert done.per_recipient == (Reply.of(451, "4.3.0", "Try later"),)
    assert conn.data_to_send() == b"" and conn.needs_reset


# -- transactions without PIPELINING ------------------------------------


def test_one_command_at_a_time_without_pipelining() -> None:
    conn = connected(EHLO_PLAIN)
    conn.send_transaction(
        MailRequest("a@x.test", body="8BITMIME"),
        rcpts("b@x.test", "c@x.test"),
        MESSAGE,
    )
    assert conn.data_to_send() == b"MAIL FROM:<a@x.test> BODY=8BITMIME\r\n"
    assert events(conn, SENDER_OK) == []
    assert conn.data_to_send() == b"RCPT TO:<b@x.test>\r\n"
    assert events(conn, RCPT_LATER) == []
    assert conn.data_to_send() == b"RCPT TO:<c@x.test>\r\n"
    assert events(conn, RCPT_OK) == []
    assert conn.data_to_send() == b"DATA\r\n"
    assert events(conn, GO_AHEAD) == []
    assert conn.data_to_send() == dot_stuff(MESSAGE)
    done = transaction_done(bytewise(conn, QUEUED))
    assert [r.code for r in done.per_recipient] == [450, 250]


def test_mail_rejected_without_pipelining_sends_nothing_more() -> None:
    conn = connected(EHLO_PLAIN)
    conn.send_transaction(MailRequest("a@x.test"), rcpts("b@x.test"), MESSAGE)
    conn.data_to_send()
    done = transaction_done(events(conn, b"451 4.3.0 Later\r\n"))
    assert conn.data_to_send() == b""
    assert done.per_recipient == (Reply.of(451, "4.3.0", "Later"),)
    assert conn.ready and not conn.needs_reset


def test_no_recipient_accepted_without_pipelining_sends_no_data() -> None:
    conn = connected(EHLO_PLAIN)
    conn.send_transaction(MailRequest("a@x.test"), rcpts("b@x.test"), MESSAGE)
    conn.data_to_send()
    events(conn, SENDER_OK)
    conn.data_to_send()
    done = transaction_done(events(conn, RCPT_UNKNOWN))
    assert conn.data_to_send() == b""
    assert done.per_recipient[0].code == 550 and conn.needs_reset


# -- BDAT ---------------------------------------------------------------


BINARY = b"\x00\x01.\r\n.\r\n\xff"


def test_small_bdat_goes_in_the_pipelined_group_as_raw_octets() -> None:
    conn = connected()
    conn.send_transaction(
        MailRequest("a@x.test", body="BINARYMIME"),
        rcpts("b@x.test"),
        BINARY,
        use_bdat=True,
    )
    # One write, one round trip: RFC 3030 §4.2 lets BDAT be pipelined.
    assert conn.data_to_send() == (
        b"MAIL FROM:<a@x.test> BODY=BINARYMIME\r\nRCPT TO:<b@x.test>\r\n"
        b"BDAT 9 LAST\r\n" + BINARY
    )
    assert conn.awaiting_data_end is False  # MAIL's reply comes first
    done = transaction_done(events(conn, SENDER_OK + RCPT_OK + QUEUED))
    assert done.per_recipient[0].code == 250 and not conn.needs_reset
    assert conn.data_to_send() == b""


def test_large_bdat_waits_for_the_recipients() -> None:
    big = b"x" * (PIPELINED_BDAT_LIMIT + 1)
    conn = connected()
    conn.send_transaction(
        MailRequest("a@x.test"), rcpts("b@x.test"), big, use_bdat=True
    )
    assert conn.data_to_send() == (
        b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\n"
    )
    assert events(conn, SENDER_OK + RCPT_OK) == []
    assert conn.data_to_send() == b"BDAT %d LAST\r\n" % len(big) + big
    assert conn.awaiting_data_end
    done = transaction_done(events(conn, QUEUED))
    assert done.per_recipient[0].code == 250 and not conn.needs_reset


def test_pipelined_bdat_for_nobody_decides_by_the_rcpt_replies() -> None:
    conn = connected()
    conn.send_transaction(
        MailRequest("a@x.test"), rcpts("b@x.test"), MESSAGE, use_bdat=True
    )
    conn.data_to_send()
    # The server reads and refuses the chunk: nobody was accepted.
    done = transaction_done(
        events(conn, SENDER_OK + RCPT_UNKNOWN + b"554 5.5.1 No valid recipients\r\n")
    )
    assert done.per_recipient[0].code == 550
    assert conn.data_to_send() == b"" and conn.needs_reset


def test_large_bdat_not_sent_when_nobody_is_accepted() -> None:
    conn = connected()
    big = b"x" * (PIPELINED_BDAT_LIMIT + 1)
    conn.send_transaction(
        MailRequest("a@x.test"), rcpts("b@x.test"), big, use_bdat=True
    )
    conn.data_to_send()
    done = transaction_done(events(conn, SENDER_OK + RCPT_UNKNOWN))
    assert conn.data_to_send() == b""
    assert done.data_reply is None and conn.needs_reset


def test_bdat_failure_asks_for_reset() -> None:
    conn = connected()
    conn.send_transaction(
        MailRequest("a@x.test"), rcpts("b@x.test"), MESSAGE, use_bdat=True
    )
    conn.data_to_send()
    done = transaction_done(
        events(conn, SENDER_OK + RCPT_OK + b"552 5.3.4 Too big\r\n")
    )
    assert done.per_recipient[0].code == 552 and conn.needs_reset


def test_bdat_and_binarymime_need_their_offer() -> None:
    conn = connected(EHLO_PLAIN)
    with pytest.raises(LocalProtocolError):
        conn.send_transaction(
            MailRequest("a@x.test"), rcpts("b@x.test"), MESSAGE, use_bdat=True
        )
    conn = connected()
    with pytest.raises(LocalProtocolError):
        conn.send_transaction(
            MailRequest("a@x.test", body="BINARYMIME"), rcpts("b@x.test"), MESSAGE
        )


# -- the connection dying ----------------------------------------------


def test_421_mid_transaction_answers_everything_left() -> None:
    conn = connected()
    conn.send_transaction(
        MailRequest("a@x.test"), rcpts("b@x.test", "c@x.test", "d@x.test"), MESSAGE
    )
    conn.data_to_send()
    evs = events(conn, SENDER_OK + RCPT_UNKNOWN + SHUTTING_DOWN)
    done = transaction_done(evs)
    shutting = Reply.of(421, "4.3.2", "Shutting down")
    assert evs[-1] == Closed(shutting)
    assert done.per_recipient == (
        Reply.of(550, "5.1.1", "No such user"),
        shutting,
        shutting,
    )
    assert conn.closed and conn.data_to_send() == b""
    assert events(conn, QUEUED) == []  # nothing after the close


def test_421_to_the_end_of_data() -> None:
    conn = connected(EHLO_PLAIN)
    conn.send_transaction(MailRequest("a@x.test"), rcpts("b@x.test"), MESSAGE)
    for reply in (SENDER_OK, RCPT_OK, GO_AHEAD):
        conn.data_to_send()
        events(conn, reply)
    evs = events(conn, SHUTTING_DOWN)
    assert transaction_done(evs).per_recipient[0].code == 421
    assert isinstance(evs[-1], Closed)


def test_connection_lost_mid_transaction() -> None:
    conn = connected()
    conn.send_transaction(
        MailRequest("a@x.test"), rcpts("b@x.test", "c@x.test"), MESSAGE
    )
    conn.data_to_send()
    events(conn, SENDER_OK + RCPT_UNKNOWN)
    conn.receive_data(b"")
    evs = events(conn)
    done = transaction_done(evs)
    lost = done.per_recipient[1]
    assert (lost.code, lost.enhanced) == (421, "4.4.2")
    assert "RCPT" in lost.text
    assert done.per_recipient[0].code == 550
    assert evs[-1] == Closed(lost)


def test_abort_while_waiting_for_the_end_of_data() -> None:
    conn = connected()
    conn.send_transaction(MailRequest("a@x.test"), rcpts("b@x.test"), MESSAGE)
    conn.data_to_send()
    events(conn, SENDER_OK + RCPT_OK + GO_AHEAD)
    timeout = Reply.of(421, "4.4.2", "Timed out")
    conn.abort(timeout)
    evs = events(conn)
    assert transaction_done(evs).per_recipient == (timeout,)
    assert evs[-1] == Closed(timeout)


def test_garbage_mid_transaction_is_a_protocol_error() -> None:
    conn = connected()
    conn.send_transaction(MailRequest("a@x.test"), rcpts("b@x.test"), MESSAGE)
    conn.data_to_send()
    evs = events(conn, SENDER_OK + b"HTTP/1.1 400 Bad Request\r\n")
    reply = transaction_done(evs).per_recipient[0]
    assert (reply.code, reply.enhanced) == (421, "4.5.0")
    assert conn.closed


def test_overlong_reply_mid_transaction_is_a_protocol_error() -> None:
    conn = connected()
    conn.send_transaction(MailRequest("a@x.test"), rcpts("b@x.test"), MESSAGE)
    conn.data_to_send()
    evs = events(conn, b"250 " + b"x" * 100_000)
    assert transaction_done(evs).per_recipient[0].enhanced == "4.5.0"


def test_unsolicited_replies() -> None:
    conn = connected()
    assert events(conn, b"421 4.4.2 Idle too long\r\n") == [
        Closed(Reply.of(421, "4.4.2", "Idle too long"))
    ]
    conn = connected()
    (closed,) = events(conn, b"250 2.0.0 Surprise\r\n")
    assert isinstance(closed, Closed) and closed.reply.enhanced == "4.5.0"


def test_eof_while_idle() -> None:
    conn = connected()
    conn.receive_data(b"")
    (closed,) = events(conn)
    assert isinstance(closed, Closed) and closed.reply.enhanced == "4.4.2"


def test_eof_while_waiting_for_ehlo() -> None:
    conn = ClientConnection()
    events(conn, GREETING)
    conn.ehlo("client.test")
    conn.receive_data(b"")
    done, closed = events(conn)
    assert isinstance(done, EhloDone) and done.reply.code == 421
    assert isinstance(closed, Closed)


def test_quit() -> None:
    conn = connected()
    conn.quit()
    assert conn.data_to_send() == b"QUIT\r\n"
    done, closed = events(conn, b"221 2.0.0 Bye\r\n")
    assert isinstance(done, QuitDone) and isinstance(closed, Closed)
    assert conn.closed


def test_two_transactions_on_one_connection() -> None:
    conn = connected()
    for _ in range(2):
        conn.send_transaction(MailRequest("a@x.test"), rcpts("b@x.test"), MESSAGE)
        conn.data_to_send()
        events(conn, SENDER_OK + RCPT_OK + GO_AHEAD)
        conn.data_to_send()
        assert transaction_done(events(conn, QUEUED)).per_recipient[0].code == 250
        assert conn.ready
