"""The standard library's smtplib against a real ``postroom serve``.

One node serves most tests here: they only add messages and find them
again by queue id (or by a sender of their own), so they cannot see each
other. Its ``max_message_size`` is 64 KiB so that the size tests need no
node of their own. Configurations that change relay policy get a node
each.

What a client sees is compared with the reply constants of the protocol
core and the relay policy, not with literals, so that a reworded reply
changes one place.
"""

from __future__ import annotations

import email.policy
import smtplib
import socket
import ssl
import uuid
from collections.abc import Callable, Iterator
from email.message import EmailMessage

import pytest

from postroom.protocol.smtp import replies
from postroom.protocol.smtp.replies import Reply
from postroom.queue.envelope import Envelope
from postroom.server import policy
from postroom.testing.process import (
    HOSTNAME,
    LOOPBACK,
    PostroomProcess,
    queued_as,
    split_received,
)

USER = "alice@postroom.test"
LOCAL_USERS = ["b@postroom.test", "ñandú@postroom.test"]
PASSWORD = "correct horse battery staple"
MAX_SIZE = 64 * 1024


def expected(reply: Reply) -> tuple[int, bytes]:
    """What smtplib returns for ``reply``: code and the text after it."""
    text = "\n".join(
        f"{reply.enhanced} {line}" if reply.enhanced else line
        for line in reply.lines)
    return reply.code, text.encode()


@pytest.fixture(scope="module")
def server(
    module_postroom_factory: Callable[..., PostroomProcess],
) -> PostroomProcess:
    node = module_postroom_factory(
        {"smtp": {"max_message_size": MAX_SIZE}}, start=False)
    node.add_user(USER, PASSWORD)
    # Local recipients must be accounts (or aliases) since #4.
    for local in LOCAL_USERS:
        node.add_user(local, PASSWORD)
    return node.start()


@pytest.fixture
def relay(server: PostroomProcess) -> Iterator[smtplib.SMTP]:
    with smtplib.SMTP(LOOPBACK, server.relay_port, timeout=10,
                      local_hostname="client.test") as client:
        yield client


def sender() -> str:
    """A sender address no other test uses, to find a message by."""
    return f"s-{uuid.uuid4().hex[:12]}@client.test"


def transact(client: smtplib.SMTP, mail_from: str, rcpts: list[str],
             message: bytes, *, mail_options: tuple[str, ...] = (),
             rcpt_options: tuple[str, ...] = ()) -> str:
    """One transaction, command by command; the queue id from DATA."""
    client.ehlo_or_helo_if_needed()
    assert client.mail(mail_from, list(mail_options)) == expected(
        replies.SENDER_OK)
    for rcpt in rcpts:
        assert client.rcpt(rcpt, list(rcpt_options)) == expected(
            replies.RECIPIENT_OK)
    code, text = client.data(message)
    assert code == 250, text
    return queued_as(text)


def stored(server: PostroomProcess, queue_id: str) -> tuple[Envelope, bytes]:
    with server.queue() as queue:
        envelope, _ = queue.get(queue_id)
        return envelope, queue.read_content(queue_id)


def find_by_sender(server: PostroomProcess, address: str) -> list[str]:
    with server.queue() as queue:
        return [i.queue_id for i in queue.list_messages()
                if i.sender == address]


# -- Plain relay ------------------------------------------------------------


def test_plain_send_to_relay(server: PostroomProcess,
                             relay: smtplib.SMTP) -> None:
    mail_from = sender()
    message = (b"From: <" + mail_from.encode() + b">\r\n"
               b"To: <b@other.test>\r\nSubject: plain\r\n\r\nHello.\r\n")

    queue_id = transact(relay, mail_from, ["b@other.test"], message)

    envelope, content = stored(server, queue_id)
    assert envelope.sender == mail_from
    assert [r.address for r in envelope.recipients] == ["b@other.test"]
    assert envelope.listener == f"relay:{server.relay_port}"
    assert envelope.client_helo == "client.test"
    assert envelope.tls == "" and envelope.auth_user is None
    received, rest = split_received(content)
    assert rest == message
    assert f"by {HOSTNAME} (Postroom) with ESMTP id {queue_id}".encode() in (
        received)
    assert b"for <b@other.test>;" in received
    assert f"{queue_id}: received".encode() in server.log_path.read_bytes()


def test_content_is_stored_byte_for_byte(server: PostroomProcess,
                                         relay: smtplib.SMTP) -> None:
    # Lines that dot-stuffing, header folding and whitespace trimming
    # would each change if anything on the way touched them.
    message = (
        b"Subject: bytes\r\n"
        b"X-Folded: one\r\n\ttwo\r\n"
        b"\r\n"
        b".\r\n"
        b"..two dots\r\n"
        b". dot space\r\n"
        b"trailing spaces   \r\n"
        b"\ttab first\r\n"
        b"\r\n"
        b"\r\n"
        b"From the start of a line\r\n"
        + b"x" * 998 + b"\r\n"
        b".\r\n"
    )

    queue_id = transact(relay, sender(), ["b@other.test"], message)

    _, content = stored(server, queue_id)
    assert split_received(content)[1] == message


def test_several_recipients_one_copy(server: PostroomProcess,
                                     relay: smtplib.SMTP) -> None:
    rcpts = ["a@other.test", "b@postroom.test", "postmaster"]

    queue_id = transact(relay, sender(), rcpts, b"Subject: three\r\n\r\nx\r\n")

    envelope, content = stored(server, queue_id)
    # A bare postmaster is queued as the local domain's (RFC 5321 §4.5.1).
    assert [r.address for r in envelope.recipients] == [
        "a@other.test", "b@postroom.test", "postmaster@postroom.test"]
    # RFC 5321 §7.6: a single copy must not name its recipients.
    assert b"\tfor <" not in split_received(content)[0]


def test_messages_in_one_session_get_their_own_ids(
        server: PostroomProcess, relay: smtplib.SMTP) -> None:
    ids = [transact(relay, sender(), ["b@other.test"],
                    f"Subject: {n}\r\n\r\n{n}\r\n".encode())
           for n in range(5)]
    relay.rset()
    ids.append(transact(relay, sender(), ["b@other.test"], b"\r\nlast\r\n"))

    assert len(set(ids)) == 6
    for n, queue_id in enumerate(ids[:5]):
        assert stored(server, queue_id)[1].endswith(f"\r\n{n}\r\n".encode())


# -- SMTPUTF8 and 8BITMIME ---------------------------------------------------


def test_send_message_smtputf8(server: PostroomProcess,
                               relay: smtplib.SMTP) -> None:
    mail_from = f"jörg-{uuid.uuid4().hex[:8]}@bücher.test"
    message = EmailMessage(policy=email.policy.SMTPUTF8)
    message["From"] = mail_from
    message["To"] = "ñandú@postroom.test"
    message["Subject"] = "Grüße aus Zürich"
    message.set_content("Schöne Grüße — ça va?\n", cte="8bit")

    # smtplib adds SMTPUTF8 and BODY=8BITMIME itself for a non-ASCII
    # address, once the server advertises both.
    refused = relay.send_message(message)

    assert refused == {}
    assert relay.has_extn("smtputf8") and relay.has_extn("8bitmime")
    (queue_id,) = find_by_sender(server, mail_from)
    envelope, content = stored(server, queue_id)
    assert envelope.smtputf8 is True
    assert envelope.body == "8BITMIME"
    assert [r.address for r in envelope.recipients] == ["ñandú@postroom.test"]
    received, rest = split_received(content)
    assert rest == message.as_bytes()
    # RFC 6531 §4.3: the protocol is named UTF8SMTP.
    assert b" with UTF8SMTP id " in received


def test_8bitmime_body_without_smtputf8(server: PostroomProcess,
                                        relay: smtplib.SMTP) -> None:
    # Latin-1, not UTF-8: 8BITMIME promises octets, not a charset.
    message = (b"Subject: latin-1\r\nContent-Type: text/plain; "
               b"charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n"
               b"\r\ncaf\xe9 cr\xe8me br\xfbl\xe9e\r\n")

    queue_id = transact(relay, sender(), ["b@other.test"], message,
                        mail_options=("BODY=8BITMIME",))

    envelope, content = stored(server, queue_id)
    assert envelope.body == "8BITMIME" and envelope.smtputf8 is False
    assert split_received(content)[1] == message


def test_undeclared_8bit_body_is_refused(server: PostroomProcess,
                                         relay: smtplib.SMTP) -> None:
    mail_from = sender()
    relay.ehlo()
    relay.mail(mail_from)
    relay.rcpt("b@other.test")

    assert relay.data(b"Subject: 8bit\r\n\r\ncaf\xe9\r\n") == expected(
        replies.UNDECLARED_8BIT)
    assert find_by_sender(server, mail_from) == []


def test_received_header_of_a_7bit_message_is_7bit(
        server: PostroomProcess, relay: smtplib.SMTP) -> None:
    relay.command_encoding = "utf-8"
    assert relay.ehlo("jörg.bücher.test")[0] == 250

    queue_id = transact(relay, sender(), ["b@other.test"],
                        b"Subject: ascii\r\n\r\nplain ASCII\r\n")

    envelope, content = stored(server, queue_id)
    assert (envelope.body, envelope.smtputf8) == ("", False)
    assert content.isascii(), split_received(content)[0]


def test_non_ascii_address_needs_smtputf8(relay: smtplib.SMTP) -> None:
    relay.ehlo()
    relay.command_encoding = "utf-8"
    code, text = relay.docmd("MAIL", "FROM:<jörg@bücher.test>")
    assert (code, text) == expected(replies.NON_ASCII_ADDRESS)


# -- Submission: STARTTLS and AUTH -------------------------------------------


@pytest.fixture
def submission(server: PostroomProcess) -> Iterator[smtplib.SMTP]:
    with smtplib.SMTP(LOOPBACK, server.submission_port, timeout=10,
                      local_hostname="client.test") as client:
        client.ehlo()
        yield client


def start_tls(client: smtplib.SMTP, server: PostroomProcess) -> None:
    """STARTTLS with certificate verification, then EHLO again."""
    assert client.starttls(context=server.client_context()) == expected(
        replies.READY_TLS)
    client.ehlo()


def test_starttls_then_auth_plain(server: PostroomProcess,
                                  submission: smtplib.SMTP) -> None:
    assert submission.has_extn("starttls")
    assert not submission.has_extn("auth")  # not in clear text
    # Verification on: the self-signed certificate names 127.0.0.1.
    start_tls(submission, server)
    assert submission.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
    assert not submission.has_extn("starttls")

    assert submission.login(USER, PASSWORD) == expected(replies.AUTH_OK)
    queue_id = transact(submission, sender(), ["b@other.test"],
                        b"Subject: submitted\r\n\r\nhi\r\n")

    envelope, content = stored(server, queue_id)
    assert envelope.auth_user == USER
    assert envelope.tls.startswith("TLSv1.")
    assert envelope.listener == f"submission:{server.submission_port}"
    assert b" with ESMTPSA id " in split_received(content)[0]


@pytest.mark.parametrize("initial_response", [True, False],
                         ids=["initial-response", "challenge"])
def test_starttls_then_auth_login(server: PostroomProcess,
                                  submission: smtplib.SMTP,
                                  initial_response: bool) -> None:
    start_tls(submission, server)
    submission.user, submission.password = USER, PASSWORD

    reply = submission.auth("LOGIN", submission.auth_login,
                            initial_response_ok=initial_response)

    assert reply == expected(replies.AUTH_OK)
    queue_id = transact(submission, sender(), ["b@other.test"],
                        b"Subject: login\r\n\r\nhi\r\n")
    assert stored(server, queue_id)[0].auth_user == USER


def test_command_right_after_the_tls_handshake_is_answered(
        server: PostroomProcess) -> None:
    # Regression: a command that arrived in the same read as the end of
    # the handshake was dropped as if it were cleartext, and the client
    # waited forever for its EHLO reply (one STARTTLS in three, more on
    # a busy machine). TLS 1.3 lets a client send its Finished and its
    # first command together; doing exactly that makes it deterministic.
    with socket.create_connection((LOOPBACK, server.submission_port),
                                  timeout=3) as sock:
        chat = _PlainChat(sock)
        assert chat.reply().startswith(b"220 ")
        chat.send(b"EHLO client.test\r\n")
        assert chat.reply().startswith(b"250")
        chat.send(b"STARTTLS\r\n")
        assert chat.reply() == READY_TLS_LINE

        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = server.client_context().wrap_bio(
            incoming, outgoing, server_hostname=LOOPBACK)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                incoming.write(sock.recv(65536))
        tls.write(b"EHLO client.test\r\n")
        sock.sendall(outgoing.read())  # Finished and EHLO: one segment
        sock.settimeout(1.5)  # the answer takes milliseconds, if it comes

        answer = b""
        while b"\r\n250 " not in b"\r\n" + answer:
            try:
                answer += tls.read(65536)
            except ssl.SSLWantReadError:
                incoming.write(sock.recv(65536))
    assert answer.startswith(f"250-{HOSTNAME}\r\n".encode())


READY_TLS_LINE = replies.READY_TLS.render()


class _PlainChat:
    """Just enough of a cleartext SMTP client to get to STARTTLS."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> bytes:
        """One whole reply (all its lines); nothing more is read."""
        while True:
            lines = self.buf.split(b"\r\n")
            for n, line in enumerate(lines[:-1]):
                if line[3:4] == b" ":
                    end = sum(len(x) + 2 for x in lines[:n + 1])
                    reply, self.buf = self.buf[:end], self.buf[end:]
                    return reply
            self.buf += self.sock.recv(65536)


def test_submission_refuses_mail_without_auth(
        server: PostroomProcess, submission: smtplib.SMTP) -> None:
    # In clear text: no AUTH offered, and no MAIL either.
    assert submission.mail(sender()) == expected(policy.AUTH_REQUIRED)
    assert submission.docmd("AUTH", "PLAIN") == expected(
        replies.AUTH_NOT_AVAILABLE)

    # Under TLS but still anonymous: the same refusal, also for a
    # local recipient's sake (RFC 6409 §4.3).
    start_tls(submission, server)
    assert submission.mail(sender()) == expected(policy.AUTH_REQUIRED)


def test_wrong_password_is_535(server: PostroomProcess,
                               submission: smtplib.SMTP) -> None:
    start_tls(submission, server)

    with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
        submission.login(USER, "wrong")

    assert (refused.value.smtp_code, refused.value.smtp_error) == expected(
        replies.AUTH_FAILED)
    # The session goes on: the right password still works.
    assert submission.login(USER, PASSWORD) == expected(replies.AUTH_OK)


def test_repeated_auth_failures_close_the_session(
        server: PostroomProcess, submission: smtplib.SMTP) -> None:
    start_tls(submission, server)
    blob = "AGFsaWNlQHBvc3Ryb29tLnRlc3QAbm9wZQ=="  # \0alice@...\0nope

    answers = [submission.docmd("AUTH", f"PLAIN {blob}") for _ in range(3)]

    assert answers[:2] == [expected(replies.AUTH_FAILED)] * 2
    # The third failure is answered, then the server hangs up with 421.
    assert answers[2] == expected(replies.AUTH_FAILED)
    assert submission.getreply() == expected(replies.TOO_MANY_AUTH_FAILURES)


def test_implicit_tls_on_submissions(server: PostroomProcess) -> None:
    with smtplib.SMTP_SSL(LOOPBACK, server.submissions_port, timeout=10,
                          local_hostname="client.test",
                          context=server.client_context()) as client:
        client.ehlo()
        assert not client.has_extn("starttls")
        assert client.has_extn("requiretls")
        client.login(USER, PASSWORD)
        queue_id = transact(client, sender(), ["b@other.test"],
                            b"Subject: 465\r\n\r\nhi\r\n",
                            mail_options=("REQUIRETLS",))

    envelope, _ = stored(server, queue_id)
    assert envelope.listener == f"submissions:{server.submissions_port}"
    assert envelope.tls.startswith("TLSv1.")
    assert envelope.auth_user == USER
    assert envelope.requiretls is True


def test_implicit_tls_refuses_mail_without_auth(
        server: PostroomProcess) -> None:
    with smtplib.SMTP_SSL(LOOPBACK, server.submissions_port, timeout=10,
                          context=server.client_context()) as client:
        client.ehlo()
        assert client.mail(sender()) == expected(policy.AUTH_REQUIRED)


def test_certificate_verifies_by_host_name(server: PostroomProcess) -> None:
    # What a client that connects by name checks (no resolver involved:
    # the name is only compared with the certificate).
    context = server.client_context()
    with socket.create_connection((LOOPBACK, server.submissions_port),
                                  timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=HOSTNAME) as tls:
        assert tls.recv(100).startswith(b"220 ")
        tls.sendall(b"QUIT\r\n")


# -- Relay policy --------------------------------------------------------------


def test_relay_denied_from_an_untrusted_network(
        postroom_factory: Callable[..., PostroomProcess]) -> None:
    # 127.0.0.1 is not in 10.0.0.0/8: we are a stranger here.
    node = postroom_factory({"smtp": {"trusted_networks": ["10.0.0.0/8"]}},
                            start=False)
    node.add_user("bob@postroom.test", PASSWORD)
    node.start()
    mail_from = sender()

    with smtplib.SMTP(LOOPBACK, node.relay_port, timeout=10) as client:
        client.ehlo()
        assert client.mail(mail_from) == expected(replies.SENDER_OK)
        assert client.rcpt("b@other.test") == expected(policy.RELAY_DENIED)
        # The "percent hack" through a local domain is no way around it.
        assert client.rcpt("b%other.test@postroom.test") == expected(
            policy.ROUTING_IN_LOCAL_PART)
        assert client.rcpt("Bob@postroom.test") == expected(
            replies.RECIPIENT_OK)
        assert client.rcpt("postmaster") == expected(replies.RECIPIENT_OK)
        code, text = client.data(b"Subject: local\r\n\r\nhi\r\n")

    assert code == 250
    envelope, _ = stored(node, queued_as(text))
    assert [r.address for r in envelope.recipients] == [
        "Bob@postroom.test", "postmaster@postroom.test"]
    assert "rejected" in node.log_text()


def test_relay_refused_when_every_recipient_is(relay: smtplib.SMTP,
                                               server: PostroomProcess) -> None:
    # From the trusted relay listener only the percent hack is refused.
    mail_from = sender()
    relay.ehlo()
    relay.mail(mail_from)
    assert relay.rcpt("a%b@postroom.test") == expected(
        policy.ROUTING_IN_LOCAL_PART)
    assert relay.docmd("DATA") == expected(replies.NO_VALID_RECIPIENTS)
    assert find_by_sender(server, mail_from) == []


# -- Size limits ---------------------------------------------------------------


def test_size_declared_too_big_is_refused_at_mail(
        relay: smtplib.SMTP) -> None:
    relay.ehlo()
    assert relay.esmtp_features["size"] == str(MAX_SIZE)

    assert relay.mail(sender(), [f"SIZE={MAX_SIZE + 1}"]) == expected(
        replies.MESSAGE_TOO_BIG)
    # Exactly the limit is fine.
    assert relay.mail(sender(), [f"SIZE={MAX_SIZE}"]) == expected(
        replies.SENDER_OK)


def test_oversize_data_is_refused_after_the_data(
        server: PostroomProcess, relay: smtplib.SMTP) -> None:
    big_sender = sender()
    line = b"y" * 78 + b"\r\n"
    big = b"Subject: big\r\n\r\n" + line * (MAX_SIZE // len(line) + 10)
    relay.ehlo()
    relay.mail(big_sender)
    relay.rcpt("b@other.test")

    assert relay.data(big) == expected(replies.MESSAGE_TOO_BIG)

    # The session survives and the next message goes through.
    queue_id = transact(relay, sender(), ["b@other.test"], b"\r\nsmall\r\n")
    assert find_by_sender(server, big_sender) == []
    assert queue_id


def test_message_of_exactly_the_limit_is_accepted(
        server: PostroomProcess, relay: smtplib.SMTP) -> None:
    head = b"Subject: exact\r\n\r\n"
    line = b"z" * 62 + b"\r\n"
    body = line * ((MAX_SIZE - len(head)) // len(line))
    message = head + body + b"w" * (MAX_SIZE - len(head) - len(body) - 2) + (
        b"\r\n")
    assert len(message) == MAX_SIZE

    queue_id = transact(relay, sender(), ["b@other.test"], message,
                        mail_options=(f"SIZE={MAX_SIZE}",))

    assert split_received(stored(server, queue_id)[1])[1] == message


def test_size_limit_does_not_count_dot_stuffing(
        server: PostroomProcess, relay: smtplib.SMTP) -> None:
    head = b"Subject: dots\r\n\r\n"
    line = b"." + b"d" * 61 + b"\r\n"
    body = line * ((MAX_SIZE - len(head)) // len(line))
    message = head + body + b"w" * (MAX_SIZE - len(head) - len(body) - 2) + (
        b"\r\n")
    assert len(message) == MAX_SIZE

    queue_id = transact(relay, sender(), ["b@other.test"], message,
                        mail_options=(f"SIZE={MAX_SIZE}",))

    assert split_received(stored(server, queue_id)[1])[1] == message


# -- DSN parameters ----------------------------------------------------------------


def test_dsn_parameters_are_kept_in_the_envelope(
        server: PostroomProcess, relay: smtplib.SMTP) -> None:
    queue_id = transact(
        relay, sender(), ["b@other.test"], b"Subject: dsn\r\n\r\nx\r\n",
        # ENVID and ORCPT are xtext (RFC 3461 §4): "+2B" is "+".
        mail_options=("RET=HDRS", "ENVID=env+2Bid-42"),
        rcpt_options=("NOTIFY=SUCCESS,FAILURE",
                      "ORCPT=rfc822;orig+2Bbox@other.test"))
    relay.mail(sender(), ["RET=FULL"])
    relay.rcpt("c@other.test", ["NOTIFY=NEVER"])
    relay.rcpt("d@other.test", ["NOTIFY=DELAY"])
    relay.rcpt("e@other.test")
    second = queued_as(relay.data(b"\r\ny\r\n")[1])

    envelope, _ = stored(server, queue_id)
    assert (envelope.ret, envelope.envid) == ("HDRS", "env+id-42")
    (rcpt,) = envelope.recipients
    assert rcpt.notify == ("SUCCESS", "FAILURE")
    assert rcpt.orcpt == "rfc822;orig+box@other.test"

    envelope, _ = stored(server, second)
    assert (envelope.ret, envelope.envid) == ("FULL", None)
    assert [(r.address, r.notify, r.orcpt) for r in envelope.recipients] == [
        ("c@other.test", (), None),
        ("d@other.test", ("DELAY",), None),
        ("e@other.test", None, None),
    ]


def test_bad_dsn_parameters_are_refused(relay: smtplib.SMTP) -> None:
    relay.ehlo()
    assert relay.mail(sender(), ["RET=SOME"])[0] == 501
    relay.mail(sender())
    assert relay.rcpt("b@other.test", ["NOTIFY=NEVER,SUCCESS"])[0] == 501
    assert relay.rcpt("b@other.test", ["ORCPT=no-semicolon"])[0] == 501
    assert relay.rcpt("b@other.test", ["X-UNKNOWN=1"]) == expected(
        replies.UNKNOWN_PARAMETER)


# -- VRFY, EXPN, HELP --------------------------------------------------------------


def test_vrfy_and_expn_cannot_verify(relay: smtplib.SMTP) -> None:
    relay.ehlo()
    assert relay.verify("alice@postroom.test") == expected(
        replies.CANNOT_VRFY)
    assert relay.expn("staff") == expected(replies.CANNOT_VRFY)
    assert relay.docmd("VRFY") == expected(replies.VRFY_SYNTAX)


def test_help(relay: smtplib.SMTP) -> None:
    code, text = relay.docmd("HELP")
    assert code == 214
    assert b"Commands: HELO EHLO MAIL RCPT DATA BDAT" in text

    code, text = relay.docmd("HELP", "rcpt")
    assert code == 214 and b"NOTIFY=" in text

    assert relay.docmd("HELP", "FLY") == (504, b"5.5.4 No help for FLY")
