"""The scripted fake providers (postroom.testing.providers), driven by
smtplib, aiosmtplib and raw sockets where the clients are too polite
(pipelining, BDAT, commands a client library would refuse to send)."""

from __future__ import annotations

import asyncio
import smtplib
import socket
import ssl
import time
from collections.abc import Iterator

import aiosmtplib
import pytest

from postroom.protocol.smtp import replies
from postroom.protocol.smtp.replies import Reply
from postroom.server import tls as tls_module
from postroom.testing import providers
from postroom.testing.providers import (
    END_OF_DATA,
    GREYLISTED,
    THROTTLED,
    TLS_REQUIRED,
    TRY_LATER,
    USER_UNKNOWN,
    Behaviour,
    FakeProvider,
)

SENDER = "alice@sender.test"
MESSAGE = b"From: alice@sender.test\r\nSubject: hi\r\n\r\nHello.\r\n"


@pytest.fixture(scope="module")
def server_tls() -> ssl.SSLContext:
    return providers.tls_context()


def client_tls() -> ssl.SSLContext:
    return tls_module.client_context(verify=False)


class Raw:
    """A byte-exact client: sends what it is given, reads whole replies."""

    def __init__(self, provider: FakeProvider) -> None:
        self.sock = socket.create_connection((provider.host, provider.port), 5)
        self.file = self.sock.makefile("rb")

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> Reply:
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("closed")
            lines.append(line.decode().rstrip("\r\n"))
            if line[3:4] != b"-":
                break
        code = int(lines[-1][:3])
        texts = [line[4:] for line in lines]
        enhanced = ""
        first = texts[0].split(" ", 1)[0]
        if code != 220 and first[:1] in "245" and first.count(".") == 2:
            enhanced = first
            texts = [t.split(" ", 1)[1] if " " in t else "" for t in texts]
        return Reply(code, enhanced, tuple(texts))

    def replies(self, count: int) -> list[Reply]:
        return [self.reply() for _ in range(count)]

    def at_eof(self) -> bool:
        return self.file.readline() == b""


@pytest.fixture
def threaded() -> Iterator[FakeProvider]:
    with FakeProvider.in_thread("127.0.0.2") as provider:
        yield provider


def smtp(provider: FakeProvider) -> smtplib.SMTP:
    client = smtplib.SMTP(provider.host, provider.port, "client.test", timeout=5)
    return client


# -- accepting -----------------------------------------------------------


async def test_accepts_with_aiosmtplib() -> None:
    async with FakeProvider("127.0.0.2") as mx:
        client = aiosmtplib.SMTP(hostname=mx.host, port=mx.port,
                                 local_hostname="client.test", start_tls=False)
        async with client:
            errors, reply = await client.sendmail(
                SENDER, ["bob@dest.test", "carol@dest.test"], MESSAGE)

    assert errors == {}
    assert reply.startswith("2.0.0 Ok: queued as FAKE1")
    [t] = mx.transactions
    assert t.accepted
    assert t.sender == SENDER
    assert t.recipients == ["bob@dest.test", "carol@dest.test"]
    assert t.data == MESSAGE
    assert t.ehlo == "client.test"
    assert not t.tls
    assert not t.chunked
    assert mx.connections[0].peer[0] == "127.0.0.1"


def test_accepts_with_smtplib_from_a_thread(threaded: FakeProvider) -> None:
    assert threaded.port != 0
    with smtp(threaded) as client:
        client.sendmail(SENDER, ["bob@dest.test"], MESSAGE)
        client.sendmail(SENDER, ["carol@dest.test"], MESSAGE)

    transactions = threaded.wait_for_sync(2)
    assert [t.recipients for t in transactions] == [["bob@dest.test"],
                                                     ["carol@dest.test"]]
    assert {t.connection for t in transactions} == {0}
    assert threaded.connections[0].commands[0] == "ehlo client.test"


async def test_two_providers_on_two_loopback_hosts() -> None:
    async with FakeProvider("127.0.0.2") as a, FakeProvider("127.0.0.3") as b:
        for mx in (a, b):
            async with aiosmtplib.SMTP(hostname=mx.host, port=mx.port,
                                       start_tls=False) as client:
                await client.sendmail(SENDER, [f"x@{mx.host}.test"], MESSAGE)

    assert [t.recipients for t in a.transactions] == [["x@127.0.0.2.test"]]
    assert [t.recipients for t in b.transactions] == [["x@127.0.0.3.test"]]


def test_dot_unstuffing(threaded: FakeProvider) -> None:
    body = b"Subject: dots\r\n\r\n.hidden\r\n..two\r\n.\r\nend\r\n"
    with smtp(threaded) as client:
        client.sendmail(SENDER, ["bob@dest.test"], body)

    assert threaded.wait_for_sync(1)[0].data == body


def test_bare_lf_dot_does_not_end_data(threaded: FakeProvider) -> None:
    raw = Raw(threaded)
    raw.reply()
    raw.send(b"EHLO c.test\r\nMAIL FROM:<a@s.test>\r\nRCPT TO:<b@d.test>\r\n"
             b"DATA\r\n")
    assert [r.code for r in raw.replies(4)] == [250, 250, 250, 354]
    raw.send(b"Subject: x\r\n\r\none\n.\ntwo\r\n.\r\n")

    assert raw.reply().code == 250
    assert threaded.transactions[0].data == b"Subject: x\r\n\r\none\n.\ntwo\r\n"
    raw.close()


# -- refusing --------------------------------------------------------------


def test_rejects_chosen_recipients(threaded: FakeProvider) -> None:
    threaded.update(reject={"Nobody@dest.test": USER_UNKNOWN})
    with smtp(threaded) as client:
        refused = client.sendmail(SENDER, ["bob@dest.test", "nobody@dest.test"],
                                  MESSAGE)

    assert refused == {"nobody@dest.test": (550, b"5.1.1 User unknown")}
    assert threaded.wait_for_sync(1)[0].recipients == ["bob@dest.test"]


async def test_temporary_failure_then_accept_while_running() -> None:
    async with (
        FakeProvider("127.0.0.2", rcpt_reply=TRY_LATER) as mx,
        aiosmtplib.SMTP(hostname=mx.host, port=mx.port, start_tls=False) as client,
    ):
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as info:
            await client.sendmail(SENDER, ["bob@dest.test"], MESSAGE)
        assert info.value.recipients[0].code == 451

        mx.update(rcpt_reply=None)
        await client.sendmail(SENDER, ["bob@dest.test"], MESSAGE)

    assert len(mx.accepted) == 1


def test_refused_data_command(threaded: FakeProvider) -> None:
    threaded.update(data_reply=Reply.of(554, "5.7.1", "No thanks"))
    with smtp(threaded) as client, pytest.raises(smtplib.SMTPDataError) as info:
        client.sendmail(SENDER, ["bob@dest.test"], MESSAGE)

    assert info.value.smtp_code == 554
    assert threaded.transactions == []


def test_refused_message_is_recorded(threaded: FakeProvider) -> None:
    threaded.update(message_reply=providers.SPAM)
    with smtp(threaded) as client, pytest.raises(smtplib.SMTPDataError):
        client.sendmail(SENDER, ["bob@dest.test"], MESSAGE)

    [t] = threaded.wait_for_sync(1)
    assert t.reply == providers.SPAM
    assert not t.accepted
    assert threaded.accepted == []


def test_refusing_mail(threaded: FakeProvider) -> None:
    threaded.update(mail_reply=Reply.of(550, "5.7.1", "Sender blocked"))
    with smtp(threaded) as client, pytest.raises(smtplib.SMTPSenderRefused):
        client.sendmail(SENDER, ["bob@dest.test"], MESSAGE)


def test_too_many_recipients(threaded: FakeProvider) -> None:
    threaded.update(max_recipients=1)
    with smtp(threaded) as client:
        refused = client.sendmail(SENDER, ["a@d.test", "b@d.test"], MESSAGE)

    assert refused == {"b@d.test": (452, b"4.5.3 Too many recipients")}


# -- greylisting -----------------------------------------------------------


def test_greylisting_admits_the_retry(threaded: FakeProvider) -> None:
    threaded.update(greylist=True)
    with smtp(threaded) as client:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
            client.sendmail(SENDER, ["bob@dest.test"], MESSAGE)
        assert info.value.recipients["bob@dest.test"][0] == GREYLISTED.code
        # Another pair is greylisted on its own; the retry passes.
        refused = client.sendmail(SENDER, ["bob@dest.test", "eve@dest.test"],
                                  MESSAGE)
        client.sendmail(SENDER, ["bob@dest.test", "eve@dest.test"], MESSAGE)

    assert refused == {"eve@dest.test": (450, b"4.7.1 Greylisted, please try "
                                              b"again later")}
    assert [t.recipients for t in threaded.transactions] == [
        ["bob@dest.test"], ["bob@dest.test", "eve@dest.test"]]


def test_greylisting_retry_too_soon(threaded: FakeProvider) -> None:
    threaded.update(greylist=True, greylist_delay=60.0)
    with smtp(threaded) as client:
        for _ in range(2):
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                client.sendmail(SENDER, ["bob@dest.test"], MESSAGE)

    threaded.forget()
    threaded.update(greylist_delay=0.0)
    with smtp(threaded) as client, pytest.raises(smtplib.SMTPRecipientsRefused):
        client.sendmail(SENDER, ["bob@dest.test"], MESSAGE)


# -- throttling --------------------------------------------------------------


def test_421_greeting_hangs_up(threaded: FakeProvider) -> None:
    threaded.update(greeting=replies.TOO_MANY_CONNECTIONS)
    with pytest.raises(smtplib.SMTPConnectError) as info:
        smtp(threaded)

    assert info.value.smtp_code == 421


def test_554_greeting_waits_for_quit(threaded: FakeProvider) -> None:
    threaded.update(greeting=Reply.of(554, "", "No SMTP service here"))
    raw = Raw(threaded)

    assert raw.reply().code == 554
    raw.send(b"EHLO c.test\r\nMAIL FROM:<a@s.test>\r\nQUIT\r\n")
    assert [r.code for r in raw.replies(3)] == [503, 503, 221]
    assert raw.at_eof()
    raw.close()


def test_throttle_after_messages_per_connection(threaded: FakeProvider) -> None:
    threaded.update(max_messages_per_connection=1)
    with smtp(threaded) as client:
        client.sendmail(SENDER, ["bob@dest.test"], MESSAGE)
        with pytest.raises(smtplib.SMTPSenderRefused) as info:
            client.sendmail(SENDER, ["bob@dest.test"], MESSAGE)
        assert info.value.smtp_code == THROTTLED.code
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()

    # A new connection may send again.
    with smtp(threaded) as client:
        client.sendmail(SENDER, ["bob@dest.test"], MESSAGE)
    assert len(threaded.accepted) == 2


# -- timing and failures -----------------------------------------------------


async def test_slow_replies() -> None:
    async with (
        FakeProvider("127.0.0.2", delays={"MAIL": 0.3}) as mx,
        aiosmtplib.SMTP(hostname=mx.host, port=mx.port, start_tls=False) as client,
    ):
        started = time.monotonic()
        await client.sendmail(SENDER, ["bob@dest.test"], MESSAGE)
        elapsed = time.monotonic() - started

    assert 0.3 <= elapsed < 2.0


async def test_slow_server_times_the_client_out() -> None:
    async with FakeProvider("127.0.0.2", delays={END_OF_DATA: 3.0}) as mx:
        client = aiosmtplib.SMTP(hostname=mx.host, port=mx.port,
                                 start_tls=False, timeout=0.3)
        await client.connect()
        with pytest.raises(aiosmtplib.SMTPTimeoutError):
            await client.sendmail(SENDER, ["bob@dest.test"], MESSAGE)
        client.close()


@pytest.mark.parametrize("verb", ["EHLO", "MAIL", "RCPT", "DATA"])
def test_drop_after_command(threaded: FakeProvider, verb: str) -> None:
    threaded.update(drop_after=verb)
    with pytest.raises(smtplib.SMTPServerDisconnected), smtp(threaded) as client:
        client.sendmail(SENDER, ["bob@dest.test"], MESSAGE)

    assert threaded.transactions == []
    assert threaded.connections[0].commands[-1].upper().startswith(verb)


def test_drop_at_connect(threaded: FakeProvider) -> None:
    threaded.update(drop_after=providers.CONNECT)
    with pytest.raises(smtplib.SMTPServerDisconnected):
        smtp(threaded)


def test_drop_after_end_of_data_records_unanswered(threaded: FakeProvider) -> None:
    threaded.update(drop_after=END_OF_DATA)
    with smtp(threaded) as client, pytest.raises(smtplib.SMTPServerDisconnected):
        client.sendmail(SENDER, ["bob@dest.test"], MESSAGE)

    [t] = threaded.wait_for_sync(1)
    assert t.reply is None
    assert not t.accepted
    assert t.data == MESSAGE


async def test_close_hangs_up_on_clients() -> None:
    mx = FakeProvider("127.0.0.2")
    await mx.start()
    reader, writer = await asyncio.open_connection(mx.host, mx.port)
    assert (await reader.readline()).startswith(b"220 ")

    await mx.close()

    assert await asyncio.wait_for(reader.read(), 2) == b""
    writer.close()


async def test_wait_for_times_out() -> None:
    async with FakeProvider("127.0.0.2") as mx:
        with pytest.raises(TimeoutError):
            await mx.wait_for(1, timeout=0.05)


# -- TLS -----------------------------------------------------------------------


def test_require_tls(server_tls: ssl.SSLContext) -> None:
    with FakeProvider.in_thread("127.0.0.2", tls=server_tls,
                                require_tls=True) as mx:
        with smtp(mx) as client:
            client.ehlo()
            code, _ = client.mail(SENDER)
            assert code == TLS_REQUIRED.code
            client.rset()
            client.starttls(context=client_tls())
            client.ehlo("after-tls.test")
            client.sendmail(SENDER, ["bob@dest.test"], MESSAGE)

        [t] = mx.wait_for_sync(1)
        assert t.tls
        assert t.ehlo == "after-tls.test"
        assert mx.connections[0].tls


async def test_starttls_with_aiosmtplib(server_tls: ssl.SSLContext) -> None:
    async with (
        FakeProvider("127.0.0.3", tls=server_tls) as mx,
        aiosmtplib.SMTP(hostname=mx.host, port=mx.port,
                        tls_context=client_tls()) as client,
    ):
        await client.sendmail(SENDER, ["bob@dest.test"], MESSAGE)

    assert mx.transactions[0].tls


def test_starttls_not_offered_without_context(threaded: FakeProvider) -> None:
    with smtp(threaded) as client:
        client.ehlo()
        assert not client.has_extn("starttls")
        assert client.docmd("STARTTLS")[0] == 502


def test_starttls_can_be_hidden(server_tls: ssl.SSLContext) -> None:
    with FakeProvider.in_thread("127.0.0.2", tls=server_tls,
                                starttls=False) as mx, smtp(mx) as client:
        client.ehlo()
        assert not client.has_extn("starttls")


# -- extensions ------------------------------------------------------------


def test_default_extensions(threaded: FakeProvider) -> None:
    with smtp(threaded) as client:
        client.ehlo()
        features = set(client.esmtp_features)

    assert {"pipelining", "8bitmime", "smtputf8", "dsn",
            "enhancedstatuscodes"} <= features
    assert "chunking" not in features
    assert "size" not in features


def test_extensions_can_be_hidden(threaded: FakeProvider) -> None:
    threaded.update(pipelining=False, eightbitmime=False, smtputf8=False,
                    dsn=False, chunking=True, size=1000)
    with smtp(threaded) as client:
        client.ehlo()
        features = client.esmtp_features
        assert client.docmd("MAIL", "FROM:<a@s.test> BODY=8BITMIME")[0] == 555
        assert client.docmd("MAIL", "FROM:<a@s.test> RET=HDRS")[0] == 555

    assert set(features) == {"size", "chunking", "enhancedstatuscodes"}
    assert features["size"] == "1000"


def test_size_is_enforced(threaded: FakeProvider) -> None:
    threaded.update(size=100)
    with smtp(threaded) as client:
        # smtplib declares SIZE= when it is advertised.
        with pytest.raises(smtplib.SMTPSenderRefused) as info:
            client.sendmail(SENDER, ["bob@dest.test"], MESSAGE + b"x" * 100)
        assert info.value.smtp_code == 552
        # A client that does not declare it is stopped at end of data.
        client.rset()
        client.docmd("MAIL", "FROM:<a@s.test>")
        client.docmd("RCPT", "TO:<b@d.test>")
        code, _ = client.data(MESSAGE + b"x" * 100)

    assert code == 552
    assert not threaded.wait_for_sync(1)[0].accepted


def test_dsn_parameters_are_recorded(threaded: FakeProvider) -> None:
    with smtp(threaded) as client:
        client.sendmail(SENDER, ["bob@dest.test"], MESSAGE,
                        mail_options=["RET=HDRS", "ENVID=E1"],
                        rcpt_options=["NOTIFY=FAILURE",
                                      "ORCPT=rfc822;bob@dest.test"])

    [t] = threaded.wait_for_sync(1)
    assert t.mail_params == {"RET": "HDRS", "ENVID": "E1"}
    assert t.rcpt_params == {
        "bob@dest.test": {"NOTIFY": "FAILURE", "ORCPT": "rfc822;bob@dest.test"}}


def test_smtputf8(threaded: FakeProvider) -> None:
    raw = Raw(threaded)
    raw.reply()
    raw.send("EHLO c.test\r\nMAIL FROM:<jörg@s.test>\r\n"
             "MAIL FROM:<jörg@s.test> SMTPUTF8\r\n".encode())

    assert [r.code for r in raw.replies(3)] == [250, 553, 250]
    raw.close()


def test_smtputf8_can_be_refused(threaded: FakeProvider) -> None:
    threaded.update(smtputf8=False)
    raw = Raw(threaded)
    raw.reply()
    raw.send("EHLO c.test\r\nMAIL FROM:<jörg@s.test> SMTPUTF8\r\n".encode())

    assert [r.code for r in raw.replies(2)] == [250, 555]
    raw.close()


# -- pipelining and chunking ------------------------------------------------


def test_pipelined_commands_are_answered_in_order(threaded: FakeProvider) -> None:
    threaded.update(reject={"no@d.test": USER_UNKNOWN})
    raw = Raw(threaded)
    raw.reply()
    raw.send(b"EHLO c.test\r\n")
    raw.reply()
    raw.send(b"MAIL FROM:<a@s.test>\r\nRCPT TO:<no@d.test>\r\n"
             b"RCPT TO:<b@d.test>\r\nDATA\r\n")

    assert raw.replies(4) == [replies.SENDER_OK, USER_UNKNOWN,
                              replies.RECIPIENT_OK, replies.START_DATA]
    raw.send(b"Subject: p\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    assert [r.code for r in raw.replies(2)] == [250, 221]
    assert threaded.connections[0].pipelined
    assert threaded.transactions[0].recipients == ["b@d.test"]
    raw.close()


def test_pipelined_data_after_all_recipients_refused(
        threaded: FakeProvider) -> None:
    threaded.update(rcpt_reply=TRY_LATER)
    raw = Raw(threaded)
    raw.reply()
    raw.send(b"EHLO c.test\r\nMAIL FROM:<a@s.test>\r\nRCPT TO:<b@d.test>\r\n"
             b"DATA\r\nRSET\r\n")

    assert [r.code for r in raw.replies(5)] == [250, 250, 451, 554, 250]
    raw.close()


def test_smtplib_does_not_pipeline(threaded: FakeProvider) -> None:
    with smtp(threaded) as client:
        client.sendmail(SENDER, ["bob@dest.test"], MESSAGE)

    assert not threaded.connections[0].pipelined


def test_bdat(threaded: FakeProvider) -> None:
    threaded.update(chunking=True)
    raw = Raw(threaded)
    raw.reply()
    first = b"Subject: c\r\n\r\n.\r\n"
    last = b"end\r\n"
    raw.send(b"EHLO c.test\r\nMAIL FROM:<a@s.test> BODY=BINARYMIME\r\n"
             b"RCPT TO:<b@d.test>\r\n"
             + b"BDAT %d\r\n" % len(first) + first
             + b"BDAT %d LAST\r\n" % len(last) + last)

    got = raw.replies(5)
    assert [r.code for r in got] == [250, 250, 250, 250, 250]
    assert got[3].text == f"{len(first)} octets received"
    [t] = threaded.wait_for_sync(1)
    assert t.chunked
    assert t.data == first + last
    assert t.mail_params == {"BODY": "BINARYMIME"}
    raw.close()


def test_bdat_without_chunking_keeps_the_stream_in_step(
        threaded: FakeProvider) -> None:
    raw = Raw(threaded)
    raw.reply()
    raw.send(b"EHLO c.test\r\nBDAT 6 LAST\r\nQUIT\r\nNOOP\r\n")

    assert [r.code for r in raw.replies(3)] == [250, 502, 250]
    raw.close()


def test_data_after_bdat_is_refused(threaded: FakeProvider) -> None:
    threaded.update(chunking=True)
    raw = Raw(threaded)
    raw.reply()
    raw.send(b"EHLO c.test\r\nMAIL FROM:<a@s.test>\r\nRCPT TO:<b@d.test>\r\n"
             b"BDAT 2\r\nhiDATA\r\n")

    assert raw.replies(5)[-1] == replies.DATA_AFTER_BDAT
    raw.close()


# -- behaviour as data -------------------------------------------------------


def test_behaviour_object_and_keywords_combine() -> None:
    base = Behaviour(hostname="mx1.gmail.test", greylist=True)
    provider = FakeProvider("127.0.0.2", behaviour=base, chunking=True)

    assert provider.behaviour.hostname == "mx1.gmail.test"
    assert provider.behaviour.greylist
    assert provider.behaviour.chunking
    assert not base.chunking
    with pytest.raises(RuntimeError):
        _ = provider.port
