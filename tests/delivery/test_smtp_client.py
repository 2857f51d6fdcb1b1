"""The SMTP delivery client against real servers on loopback.

Three kinds of peer:

- Postfix's ``smtp-sink``, with the options that make it drop
  PIPELINING, ESMTP or 8BITMIME, refuse commands or hang up; its dump
  files show the MAIL and RCPT arguments and the message it got;
- ``Mx``, a small scripted asyncio server in this file, for behaviour no
  real server shows on demand (a 421 greeting, a hang, a drop after
  RCPT, a broken STARTTLS);
- Postroom's own ``SmtpServer`` with a ``FakeSpool``, to check that a
  message arrives byte for byte, over DATA and over BDAT, and for TLS
  and AUTH.

Every server listens on 127.0.0.x with a port the kernel picks; no name
is ever resolved.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import shutil
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from postroom.delivery import smtp as smtp_module
from postroom.delivery.outcome import (
    BOUNCED,
    DEFERRED,
    DELIVERED,
    DeliveryError,
    Route,
    Target,
)
from postroom.delivery.smtp import ClientSettings, SmtpClient
from postroom.queue.envelope import Envelope, Recipient
from postroom.server import tls
from postroom.testing import peers
from postroom.testing.smtp import (
    FakeAuthenticator,
    FakeSpool,
    make_config,
    running_server,
)

HELO = "client.test"
SETTINGS = ClientSettings(
    helo_name=HELO, connect_timeout=2.0, command_timeout=3.0, data_timeout=3.0
)
MESSAGE = (
    b"From: a@example.test\r\n"
    b"To: b@example.test\r\n"
    b"Subject: dots\r\n"
    b"\r\n"
    b".starts with a dot\r\n"
    b"..two dots\r\n"
    b".\r\n"
    b"last line\r\n"
)
EIGHT_BIT = b"Subject: caf\xc3\xa9\r\n\r\nna\xc3\xafve\r\n"
EIGHT_BIT_BODY = (
    b"Subject: plain\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n\r\nna\xc3\xafve\r\n"
)


def envelope(*recipients: str, **fields: object) -> Envelope:
    env = Envelope("Q1", "a@example.test", **fields)  # type: ignore[arg-type]
    env.recipients = [Recipient(r) for r in recipients]
    return env


def route(*targets: Target, tls: str = "none", **kw: object) -> Route:
    return Route("example.test", "smtp", targets, tls=tls, **kw)  # type: ignore[arg-type]


async def deliver(
    client: SmtpClient, env: Envelope, content: bytes = MESSAGE
) -> list[str]:
    results = await client.send(env, env.recipients, content)
    assert all(r.peer == client.peer for r in results)
    return [r.status for r in results]


# -- a scripted server --------------------------------------------------

DROP = b"<drop>"  # close the connection (after what precedes it)
HANG = b"<hang>"  # never answer

DEFAULT_EHLO = ("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES")


@dataclass
class Mx:
    """A scripted SMTP server. ``answers`` maps a verb (``"RCPT"``, or
    ``"."`` for the end of data) to the replies for its successive uses
    (the last one repeats); unlisted verbs get a plain success. It keeps
    every command line and every message (unstuffed) it received."""

    greeting: bytes = b"220 mx.test ESMTP"
    ehlo: tuple[str, ...] = DEFAULT_EHLO
    answers: dict[str, list[bytes]] = field(default_factory=dict)
    commands: list[bytes] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)
    connections: int = 0
    _uses: dict[str, int] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def answer(self, verb: str, default: bytes) -> bytes:
        script = self.answers.get(verb)
        if not script:
            return default
        n = self._uses.get(verb, 0)
        self._uses[verb] = n + 1
        return script[min(n, len(script) - 1)]

    def verbs(self) -> list[str]:
        return [c.split(b" ")[0].split(b":")[0].strip().decode() for c in self.commands]

    async def handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._converse(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Stopped by ``serving``; ending quietly keeps asyncio's
            # stream callback from logging the cancellation.
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def stop(self) -> None:
        """End every conversation still going (a HANG, say)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _converse(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if not await self._say(writer, self.greeting):
            return
        while line := await reader.readline():
            self.commands.append(line.rstrip(b"\r\n"))
            verb = self.verbs()[-1].upper()
            reply = self.answer(verb, _DEFAULTS.get(verb, b"250 2.0.0 Ok"))
            if verb == "EHLO" and reply == b"250 2.0.0 Ok":
                lines = ["mx.test", *self.ehlo]
                reply = "\r\n".join(
                    f"250{'-' if i < len(lines) - 1 else ' '}{x}"
                    for i, x in enumerate(lines)
                ).encode()
            if not await self._say(writer, reply):
                return
            if verb == "DATA" and reply.startswith(b"354"):
                await self._data(reader)
                if not await self._say(writer, self.answer(".", b"250 2.0.0 Queued")):
                    return
            elif verb == "BDAT":
                await reader.readexactly(int(line.split()[1]))
            elif verb == "STARTTLS" and reply.startswith(b"220"):
                # A broken TLS stack: garbage instead of a handshake.
                writer.write(b"\x15\x03\x03\x00\x02\x02\x28 not TLS\r\n")
                return
            if verb == "QUIT":
                return

    async def _data(self, reader: asyncio.StreamReader) -> None:
        lines = []
        while (line := await reader.readline()) not in (b".\r\n", b""):
            lines.append(line[1:] if line.startswith(b".") else line)
        self.messages.append(b"".join(lines))

    @staticmethod
    async def _say(writer: asyncio.StreamWriter, reply: bytes) -> bool:
        if reply.endswith(DROP):
            writer.write(reply.removesuffix(DROP))
            await writer.drain()
            return False
        if reply == HANG:
            await asyncio.sleep(3600)
        writer.write(reply + b"\r\n")
        await writer.drain()
        return not reply.startswith(b"421")


_DEFAULTS = {
    "DATA": b"354 Go ahead",
    "QUIT": b"221 2.0.0 Bye",
    "STARTTLS": b"454 4.7.0 TLS not available",
}


@contextlib.asynccontextmanager
async def serving(mx: Mx, host: str = "127.0.0.1") -> AsyncIterator[Target]:
    """Run *mx* on *host* and yield a Target for it."""
    server = await asyncio.start_server(mx.handle, host, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield Target("mx.test", port, (host,))
    finally:
        server.close()
        await mx.stop()


def closed_port(host: str = "127.0.0.3") -> Target:
    """A target where nothing listens: connection refused."""
    return Target("down.test", peers.free_port(), (host,))


# -- connecting ---------------------------------------------------------


async def test_4xx_greeting_moves_on_to_the_next_mx() -> None:
    busy = Mx(greeting=b"421 4.3.2 Too busy")
    good = Mx()
    async with serving(busy) as first, serving(good, "127.0.0.2") as second:
        client = await SmtpClient.connect(route(first, second), SETTINGS)
        try:
            assert client.peer.address == "127.0.0.2"
            assert await deliver(client, envelope("b@example.test")) == [DELIVERED]
        finally:
            await client.close()
    assert busy.connections == 1 and busy.commands == []
    assert good.messages == [MESSAGE]
    assert good.verbs()[-1] == "QUIT"


async def test_refused_address_moves_on_to_the_next_address() -> None:
    good = Mx()
    async with serving(good, "127.0.0.2") as up:
        # Nothing listens on 127.0.0.3 at that port.
        both = Target("mx.test", up.port, ("127.0.0.3", "127.0.0.2"))
        client = await SmtpClient.connect(route(both), SETTINGS)
        await client.close()
    assert client.peer.address == "127.0.0.2"


async def test_nothing_answers() -> None:
    a, b = closed_port("127.0.0.3"), closed_port("127.0.0.4")
    with pytest.raises(DeliveryError) as caught:
        await SmtpClient.connect(route(a, b), SETTINGS)
    error = caught.value
    assert not error.permanent
    assert error.reply.enhanced == "4.4.1" and "refused" in error.reply.text
    assert error.peer is not None and error.peer.address == "127.0.0.4"


async def test_5xx_greeting_everywhere_is_permanent() -> None:
    mx = Mx(greeting=b"554 5.7.1 No SMTP service here")
    async with serving(mx) as target:
        with pytest.raises(DeliveryError) as caught:
            await SmtpClient.connect(route(target), SETTINGS)
    assert caught.value.permanent and caught.value.reply.code == 554
    assert mx.verbs() == ["QUIT"]  # RFC 5321 §3.1: QUIT after a 554


async def test_5xx_greeting_then_no_answer_is_temporary() -> None:
    mx = Mx(greeting=b"554 5.7.1 No SMTP service here")
    async with serving(mx) as target:
        with pytest.raises(DeliveryError) as caught:
            await SmtpClient.connect(route(target, closed_port()), SETTINGS)
    # The telling reply is kept, in its temporary form.
    assert caught.value.reply.text == "No SMTP service here"
    assert caught.value.reply.code == 454 and not caught.value.permanent


async def test_helo_when_ehlo_is_refused() -> None:
    mx = Mx(answers={"EHLO": [b"502 5.5.1 Not implemented"]})
    async with serving(mx) as target:
        client = await SmtpClient.connect(route(target), SETTINGS)
        assert not client.capabilities.esmtp
        env = envelope("b@example.test", body="8BITMIME")
        assert await deliver(client, env) == [DELIVERED]
        await client.close()
    assert mx.verbs()[:3] == ["EHLO", "HELO", "MAIL"]
    assert mx.commands[2] == b"MAIL FROM:<a@example.test>"


async def test_allowed_networks() -> None:
    mx = Mx()
    async with serving(mx) as target:
        settings = replace(SETTINGS, allowed_networks=("127.0.0.2/32",))
        with pytest.raises(DeliveryError) as caught:
            await SmtpClient.connect(route(target), settings)
    assert mx.connections == 0
    assert "not allowed" in caught.value.reply.text


async def test_silent_server_times_out_before_the_greeting() -> None:
    settings = replace(SETTINGS, connect_timeout=0.2, command_timeout=0.3)
    mx = Mx(greeting=HANG)
    async with serving(mx) as target:
        started = time.monotonic()
        with pytest.raises(DeliveryError) as caught:
            await SmtpClient.connect(route(target), settings)
    assert time.monotonic() - started < 2
    assert caught.value.reply.enhanced == "4.4.2"
    assert "greeting" in caught.value.reply.text


# -- transactions -------------------------------------------------------


@contextlib.asynccontextmanager
async def session(
    mx: Mx, settings: ClientSettings = SETTINGS
) -> AsyncIterator[SmtpClient]:
    async with serving(mx) as target:
        client = await SmtpClient.connect(route(target), settings)
        try:
            yield client
        finally:
            await client.close()


async def test_partial_recipient_rejection() -> None:
    mx = Mx(answers={"RCPT": [b"250 2.1.5 Ok", b"550 5.1.1 No such user", b"250 Ok"]})
    async with session(mx) as client:
        env = envelope("b@x.test", "c@x.test", "d@x.test")
        results = await client.send(env, env.recipients, MESSAGE)
        assert [r.status for r in results] == [DELIVERED, BOUNCED, DELIVERED]
        assert results[1].reply.enhanced == "5.1.1"
        assert results[0].reply.text == "Queued"
        assert client.usable and client.messages_sent == 1
    assert mx.messages == [MESSAGE]


async def test_421_mid_transaction() -> None:
    mx = Mx(answers={"RCPT": [b"250 2.1.5 Ok", b"421 4.3.2 Shutting down"]})
    async with session(mx) as client:
        env = envelope("b@x.test", "c@x.test", "d@x.test")
        results = await client.send(env, env.recipients, MESSAGE)
        assert [r.status for r in results] == [DEFERRED] * 3
        assert {r.reply.code for r in results} == {421}
        assert not client.usable
        more = await client.send(env, env.recipients[:1], MESSAGE)
        assert more[0].status == DEFERRED
    assert mx.messages == []


async def test_connection_dropped_after_rcpt() -> None:
    mx = Mx(answers={"DATA": [DROP]})
    async with session(mx) as client:
        env = envelope("b@x.test", "c@x.test")
        results = await client.send(env, env.recipients, MESSAGE)
        assert [r.status for r in results] == [DEFERRED, DEFERRED]
        assert results[0].reply.enhanced == "4.4.2"
        assert "DATA" in results[0].reply.text
        assert not client.usable


async def test_slow_server_hits_the_command_timeout() -> None:
    settings = replace(SETTINGS, command_timeout=0.3)
    mx = Mx(answers={"MAIL": [HANG]})
    async with session(mx, settings) as client:
        started = time.monotonic()
        env = envelope("b@x.test")
        (result,) = await client.send(env, env.recipients, MESSAGE)
        assert time.monotonic() - started < 2
        assert result.status == DEFERRED
        assert "Timed out" in result.reply.text and result.reply.enhanced == "4.4.2"
        assert not client.usable


async def test_slow_end_of_data_gets_the_data_timeout() -> None:
    settings = replace(SETTINGS, command_timeout=0.2, data_timeout=0.4)
    mx = Mx(answers={".": [HANG]})
    async with session(mx, settings) as client:
        env = envelope("b@x.test")
        (result,) = await client.send(env, env.recipients, MESSAGE)
        assert result.status == DEFERRED and "0.4s" in result.reply.text


async def test_no_recipient_accepted_then_next_message_resets() -> None:
    mx = Mx(
        answers={
            "RCPT": [b"550 5.1.1 No", b"250 2.1.5 Ok"],
            "DATA": [b"554 5.5.1 No valid recipients", b"354 Go ahead"],
        }
    )
    async with session(mx) as client:
        env = envelope("b@x.test")
        assert await deliver(client, env) == [BOUNCED]
        assert client.usable
        assert await deliver(client, env) == [DELIVERED]
        assert client.messages_sent == 2
    assert mx.verbs() == [
        "EHLO", "MAIL", "RCPT", "DATA", "RSET", "MAIL", "RCPT", "DATA", "QUIT"
    ]  # fmt: skip
    assert mx.messages == [MESSAGE]


async def test_421_while_idle_is_not_taken_for_a_reply() -> None:
    # The 421 follows the end-of-data reply in the same packet, as from a
    # server whose idle timer fires; the connection stays open.
    mx = Mx(answers={".": [b"250 2.0.0 Queued\r\n421 4.4.2 Idle too long"]})
    async with session(mx) as client:
        env = envelope("b@x.test")
        assert await deliver(client, env) == [DELIVERED]
        (result,) = await client.send(env, env.recipients, MESSAGE)
        assert result.status == DEFERRED and "not usable" in result.reply.text
        assert not client.usable
    assert mx.verbs().count("MAIL") == 1


async def test_server_hanging_up_while_idle() -> None:
    mx = Mx(answers={".": [b"250 2.0.0 Queued\r\n" + DROP]})
    async with session(mx) as client:
        env = envelope("b@x.test")
        assert await deliver(client, env) == [DELIVERED]
        for _ in range(100):
            if not client.usable:
                break
            await asyncio.sleep(0.01)
        assert not client.usable


async def test_mail_refused() -> None:
    mx = Mx(answers={"MAIL": [b"451 4.7.1 Greylisted"], "DATA": [b"503 5.5.1 No"]})
    async with session(mx) as client:
        env = envelope("b@x.test", "c@x.test")
        results = await client.send(env, env.recipients, MESSAGE)
        assert [r.reply.enhanced for r in results] == ["4.7.1", "4.7.1"]
        assert [r.status for r in results] == [DEFERRED, DEFERRED]
        assert client.usable


async def test_size_limit_is_checked_before_sending() -> None:
    mx = Mx(ehlo=(*DEFAULT_EHLO, f"SIZE {len(MESSAGE) + 10}"))
    async with session(mx) as client:
        env = envelope("b@x.test")
        (result,) = await client.send(env, env.recipients, MESSAGE * 2)
        assert result.status == BOUNCED and result.reply.enhanced == "5.3.4"
        assert await deliver(client, env) == [DELIVERED]
    assert mx.commands[1] == f"MAIL FROM:<a@example.test> SIZE={len(MESSAGE)}".encode()


async def test_smtputf8_needed_but_not_offered() -> None:
    mx = Mx()
    async with session(mx) as client:
        env = envelope("jörg@x.test", "b@bücher.test", smtputf8=True)
        results = await client.send(env, env.recipients, MESSAGE)
        assert [r.status for r in results] == [BOUNCED, DELIVERED]
        assert results[0].reply.enhanced == "5.6.7"
    # A non-ASCII domain alone travels in A-labels, without SMTPUTF8.
    assert b"RCPT TO:<b@xn--bcher-kva.test>" in mx.commands
    assert b"MAIL FROM:<a@example.test>" in mx.commands


async def test_smtputf8_when_offered() -> None:
    mx = Mx(ehlo=(*DEFAULT_EHLO, "SMTPUTF8"))
    async with session(mx) as client:
        env = envelope("jörg@x.test", smtputf8=True)
        assert await deliver(client, env, EIGHT_BIT) == [DELIVERED]
    assert "RCPT TO:<jörg@x.test>".encode() in mx.commands
    assert mx.commands[1].endswith(b" BODY=8BITMIME SMTPUTF8")


async def test_requiretls_without_tls_bounces() -> None:
    mx = Mx()
    async with session(mx) as client:
        env = envelope("b@x.test", requiretls=True)
        (result,) = await client.send(env, env.recipients, MESSAGE)
        assert result.status == BOUNCED and result.reply.enhanced == "5.7.30"
    assert "MAIL" not in mx.verbs()


async def test_8bit_without_8bitmime_is_converted_or_bounced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mx = Mx(ehlo=("PIPELINING",))
    async with session(mx) as client:
        env = envelope("b@x.test")
        assert await deliver(client, env, EIGHT_BIT_BODY) == [DELIVERED]
        (result,) = await client.send(env, env.recipients, EIGHT_BIT)
        assert result.status == BOUNCED and result.reply.enhanced == "5.6.3"
    (sent,) = mx.messages
    assert sent.isascii() and b"quoted-printable" in sent.lower()
    assert b"BODY=" not in b"".join(mx.commands)


async def test_dsn_parameters_only_when_offered() -> None:
    env = envelope("b@x.test", ret="HDRS", envid="Q1+x")
    env.recipients[0] = Recipient("b@x.test", ("SUCCESS",), "rfc822;b@x.test")
    plain = Mx()
    async with session(plain) as client:
        await deliver(client, env)
    assert plain.commands[1:3] == [b"MAIL FROM:<a@example.test>", b"RCPT TO:<b@x.test>"]
    dsn = Mx(ehlo=(*DEFAULT_EHLO, "DSN"))
    async with session(dsn) as client:
        await deliver(client, env)
    assert dsn.commands[1:3] == [
        b"MAIL FROM:<a@example.test> RET=HDRS ENVID=Q1+2Bx",
        b"RCPT TO:<b@x.test> NOTIFY=SUCCESS ORCPT=rfc822;b@x.test",
    ]


async def test_close_quits_and_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smtp_module, "QUIT_TIMEOUT", 0.2)
    mx = Mx(answers={"QUIT": [HANG]})
    async with serving(mx) as target:
        settings = replace(SETTINGS, command_timeout=30)
        client = await SmtpClient.connect(route(target), settings)
        started = time.monotonic()
        await client.close()
        assert time.monotonic() - started < 1.5
        assert not client.usable
    assert mx.verbs()[-1] == "QUIT"


# -- TLS ----------------------------------------------------------------


@dataclass
class Pki:
    ca_file: Path
    context: ssl.SSLContext


def make_pki(directory: Path, host: str) -> Pki:
    """A CA and a server certificate for *host* signed by it."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(pem))
    cert_file, key_file = directory / "server.pem", directory / "server.key"
    cert_file.write_bytes(leaf.public_bytes(pem))
    key_file.write_bytes(
        key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return Pki(ca_file, context)


@contextlib.asynccontextmanager
async def postroom(
    tmp_path: Path,
    *,
    host: str = "127.0.0.1",
    context: ssl.SSLContext | None = None,
    spool: FakeSpool | None = None,
    authenticator: FakeAuthenticator | None = None,
    **settings: object,
) -> AsyncIterator[Target]:
    """Postroom's SMTP server on *host*, with TLS when given a context."""
    config = make_config(tmp_path, listeners=f"relay={host}:0", **settings)
    async with running_server(
        config, spool, tls_context=context, authenticator=authenticator
    ) as server:
        yield Target("mx.test", server.bound_ports[0], (host,))


async def test_opportunistic_tls_with_our_server(tmp_path: Path) -> None:
    spool = FakeSpool()
    config = make_config(tmp_path)
    async with postroom(tmp_path, context=tls.server_context(config), spool=spool) as t:
        client = await SmtpClient.connect(route(t, tls="opportunistic"), SETTINGS)
        try:
            assert client.tls.startswith("TLSv1.")
            assert not client.capabilities.starttls  # the EHLO after TLS
            assert await deliver(client, envelope("b@x.test")) == [DELIVERED]
        finally:
            await client.close()
    ((env, content),) = spool.commits
    assert content.endswith(MESSAGE) and env.tls == client.tls


async def test_opportunistic_tls_falls_back_after_a_failed_handshake() -> None:
    mx = Mx(ehlo=(*DEFAULT_EHLO, "STARTTLS"), answers={"STARTTLS": [b"220 Go"]})
    async with serving(mx) as target:
        client = await SmtpClient.connect(route(target, tls="opportunistic"), SETTINGS)
        try:
            assert client.tls == "" and client.usable
            assert await deliver(client, envelope("b@x.test")) == [DELIVERED]
        finally:
            await client.close()
    assert mx.connections == 2
    assert mx.verbs() == ["EHLO", "STARTTLS", "EHLO", "MAIL", "RCPT", "DATA", "QUIT"]


async def test_tls_required_but_not_offered_moves_on(tmp_path: Path) -> None:
    plain = Mx()
    config = make_config(tmp_path)
    async with (
        serving(plain) as first,
        postroom(
            tmp_path, host="127.0.0.2", context=tls.server_context(config)
        ) as second,
    ):
        client = await SmtpClient.connect(
            route(first, second, tls="required"), SETTINGS
        )
        await client.close()
        assert client.peer.address == "127.0.0.2" and client.tls

        with pytest.raises(DeliveryError) as caught:
            await SmtpClient.connect(route(first, tls="required"), SETTINGS)
    reply = caught.value.reply
    assert not caught.value.permanent
    assert reply.enhanced == "4.7.5" and "TLS is required" in reply.text


async def test_tls_required_and_the_handshake_fails() -> None:
    mx = Mx(ehlo=(*DEFAULT_EHLO, "STARTTLS"), answers={"STARTTLS": [b"220 Go"]})
    async with serving(mx) as target:
        with pytest.raises(DeliveryError) as caught:
            await SmtpClient.connect(route(target, tls="required"), SETTINGS)
    assert caught.value.reply.enhanced == "4.7.5"
    assert "TLS with" in caught.value.reply.text
    assert mx.connections == 1


async def test_tls_required_and_starttls_refused() -> None:
    mx = Mx(ehlo=(*DEFAULT_EHLO, "STARTTLS"))
    async with serving(mx) as target:
        with pytest.raises(DeliveryError) as caught:
            await SmtpClient.connect(route(target, tls="required"), SETTINGS)
        client = await SmtpClient.connect(route(target, tls="opportunistic"), SETTINGS)
        assert client.usable and client.tls == ""
        await client.close()
    assert "refused STARTTLS" in caught.value.reply.text


async def test_tls_verify(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "good", "mx.test")
    other = make_pki(tmp_path / "other", "mx.test")
    async with postroom(tmp_path, context=pki.context) as target:
        good = replace(SETTINGS, ca_file=str(pki.ca_file))
        client = await SmtpClient.connect(route(target, tls="verify"), good)
        assert client.tls
        assert await deliver(client, envelope("b@x.test")) == [DELIVERED]
        await client.close()

        wrong_ca = replace(SETTINGS, ca_file=str(other.ca_file))
        with pytest.raises(DeliveryError) as caught:
            await SmtpClient.connect(route(target, tls="verify"), wrong_ca)
        assert caught.value.reply.enhanced == "4.7.5"
        assert "certificate verification failed" in caught.value.reply.text

        misnamed = Target("other.test", target.port, target.addresses)
        with pytest.raises(DeliveryError) as caught:
            await SmtpClient.connect(route(misnamed, tls="verify"), good)
        assert "certificate verification failed" in caught.value.reply.text

        # "required" takes any certificate.
        client = await SmtpClient.connect(route(misnamed, tls="required"), wrong_ca)
        assert client.tls
        await client.close()


# -- AUTH ---------------------------------------------------------------


async def test_auth_plain_with_our_server(tmp_path: Path) -> None:
    spool = FakeSpool()
    authenticator = FakeAuthenticator()
    async with postroom(
        tmp_path, spool=spool, authenticator=authenticator, auth_without_tls=True
    ) as target:
        client = await SmtpClient.connect(
            route(target, auth=("alice", "secret")), SETTINGS
        )
        assert await deliver(client, envelope("b@x.test")) == [DELIVERED]
        await client.close()

        with pytest.raises(DeliveryError) as caught:
            await SmtpClient.connect(route(target, auth=("alice", "wrong")), SETTINGS)
    assert spool.commits[0][0].auth_user == "alice"
    # A wrong password is our configuration: deferred, not bounced.
    assert caught.value.reply.code == 435 and not caught.value.permanent
    assert caught.value.reply.enhanced == "4.7.8"


async def test_auth_login_only() -> None:
    mx = Mx(
        ehlo=(*DEFAULT_EHLO, "AUTH LOGIN"),
        answers={"AUTH": [b"334 VXNlcm5hbWU6"], "YWXPY2U=": [b"334 UGFzc3dvcmQ6"]},
    )
    # The scripted server sees the base64 lines as "verbs".
    mx.answers["C2VJCMV0"] = [b"235 2.7.0 Authenticated"]
    async with serving(mx) as target:
        client = await SmtpClient.connect(
            route(target, auth=("alice", "secret")), SETTINGS
        )
        await client.close()
    assert mx.commands[1:4] == [b"AUTH LOGIN", b"YWxpY2U=", b"c2VjcmV0"]


async def test_auth_not_offered() -> None:
    mx = Mx()
    async with serving(mx) as target:
        with pytest.raises(DeliveryError) as caught:
            await SmtpClient.connect(route(target, auth=("alice", "x")), SETTINGS)
    assert not caught.value.permanent and "AUTH" in caught.value.reply.text


# -- byte for byte, with Postroom's own server ---------------------------


async def test_bdat_arrives_byte_for_byte(tmp_path: Path) -> None:
    spool = FakeSpool()
    async with postroom(tmp_path, spool=spool) as target:
        client = await SmtpClient.connect(route(target), SETTINGS)
        assert client.capabilities.chunking
        env = envelope("b@x.test", "c@x.test")
        assert await deliver(client, env) == [DELIVERED, DELIVERED]
        assert await deliver(client, envelope("b@x.test"), EIGHT_BIT) == [DELIVERED]
        binary = envelope("b@x.test", body="BINARYMIME")
        raw = b"Subject: raw\r\n\r\n\x00\x01\n.\r\n.\r\n\xff"
        assert await deliver(client, binary, raw) == [DELIVERED]
        await client.close()
    contents = [c for _, c in spool.commits]
    assert contents[0].endswith(MESSAGE)
    assert contents[1].endswith(EIGHT_BIT) and spool.commits[1][0].body == "8BITMIME"
    assert contents[2].endswith(raw) and spool.commits[2][0].body == "BINARYMIME"


async def test_data_arrives_byte_for_byte(tmp_path: Path) -> None:
    spool = FakeSpool()
    async with postroom(tmp_path, spool=spool) as target:
        client = await SmtpClient.connect(route(target), SETTINGS)
        # Pretend the server lacks CHUNKING, so that DATA is used.
        client.capabilities = replace(client.capabilities, chunking=False)
        assert await deliver(client, envelope("b@x.test")) == [DELIVERED]
        assert await deliver(client, envelope("b@x.test"), b".") == [DELIVERED]
        await client.close()
    contents = [c for _, c in spool.commits]
    assert contents[0].endswith(b"\r\n" + MESSAGE)
    # A message without its final CRLF gets one; a lone "." survives.
    assert contents[1].endswith(b"\r\n.\r\n")


async def test_large_message_both_ways(tmp_path: Path) -> None:
    # Big enough to fill the socket buffers, so writes wait for drain.
    big = b"Subject: big\r\n\r\n" + b".x" * 40 + b"\r\n" + b"y" * 998 * 4000
    big = big.replace(b"y" * 998, b"y" * 996 + b"\r\n")
    spool = FakeSpool()
    async with postroom(tmp_path, spool=spool) as target:
        client = await SmtpClient.connect(route(target), SETTINGS)
        assert await deliver(client, envelope("b@x.test"), big) == [DELIVERED]
        client.capabilities = replace(client.capabilities, chunking=False)
        assert await deliver(client, envelope("b@x.test"), big) == [DELIVERED]
        await client.close()
    assert [c.endswith(b"\r\n" + big) for _, c in spool.commits] == [True, True]


def test_under_uvloop(tmp_path: Path) -> None:
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> list[bytes]:
        spool = FakeSpool()
        config = make_config(tmp_path)
        context = tls.server_context(config)
        async with postroom(tmp_path, context=context, spool=spool) as target:
            client = await SmtpClient.connect(route(target, tls="required"), SETTINGS)
            assert client.tls
            assert await deliver(client, envelope("b@x.test")) == [DELIVERED]
            await client.close()
        return spool.contents

    loop = uvloop.new_event_loop()
    try:
        (content,) = loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert content.endswith(MESSAGE)


# -- Postfix's smtp-sink -----------------------------------------------


@dataclass
class Sink:
    target: Target
    dumps: Path

    def messages(self, *, wait: bool = True) -> list[bytes]:
        """The dumped transactions, oldest first; with *wait*, give
        smtp-sink a moment to write the first."""
        deadline = time.monotonic() + (3 if wait else 0)
        while True:
            files = sorted(self.dumps.glob("*"), key=lambda p: p.stat().st_mtime_ns)
            if files or time.monotonic() >= deadline:
                return [p.read_bytes() for p in files]
            time.sleep(0.05)


@pytest.fixture
def sink(require_tool: Callable[[str], str]) -> Iterator[Callable[..., Sink]]:
    """``start(*options) -> Sink``: smtp-sink with a dump directory."""
    require_tool("smtp-sink")
    started: list[peers.SmtpSink] = []
    root = peers.make_root("postroom-sink-")

    def start(*options: str) -> Sink:
        dumps = root / f"dump{len(started)}"
        dumps.mkdir()
        dumps.chmod(0o777)  # smtp-sink writes as Postfix's own user
        port = peers.free_port()
        started.append(
            peers.start_smtp_sink(
                root,
                port,
                lifetime=60,
                extra_args=["-d", f"{dumps}/%M.", *options],
            )
        )
        return Sink(Target("sink.test", port, (peers.LOOPBACK,)), dumps)

    yield start
    for s in started:
        s.stop()
    shutil.rmtree(root, ignore_errors=True)


def sink_fields(dump: bytes) -> tuple[dict[bytes, list[bytes]], bytes]:
    """smtp-sink's X- header fields, and the message after its Received."""
    head, _, rest = dump.partition(b"Received: ")
    fields: dict[bytes, list[bytes]] = {}
    for line in head.splitlines():
        name, _, value = line.partition(b": ")
        fields.setdefault(name, []).append(value)
    message = rest.split(b"\n", 3)[3]  # the Received field's three lines
    return fields, message


def lf(content: bytes) -> bytes:
    """What smtp-sink writes for *content*: LF line ends, an empty line
    after it."""
    return content.replace(b"\r\n", b"\n") + b"\n"


@pytest.mark.peers
@pytest.mark.parametrize("options", [(), ("-p",)], ids=["pipelining", "lockstep"])
async def test_sink_delivers(
    sink: Callable[..., Sink], options: tuple[str, ...]
) -> None:
    peer = sink(*options)
    env = envelope("b@x.test", "c@x.test", ret="FULL", envid="Q1")
    env.recipients[0].notify = ("FAILURE",)
    client = await SmtpClient.connect(route(peer.target), SETTINGS)
    try:
        assert client.capabilities.pipelining == (options == ())
        assert await deliver(client, env) == [DELIVERED, DELIVERED]
        assert await deliver(client, envelope("d@x.test"), EIGHT_BIT) == [DELIVERED]
    finally:
        await client.close()
    # Ordered by what they hold: smtp-sink's file times can tie.
    first, second = sorted(peer.messages(), key=lambda m: b"BODY=" in m)
    fields, message = sink_fields(first)
    assert fields[b"X-Mail-Args"] == [b"<a@example.test> RET=FULL ENVID=Q1"]
    assert fields[b"X-Rcpt-Args"] == [b"<b@x.test> NOTIFY=FAILURE", b"<c@x.test>"]
    assert message == lf(MESSAGE)
    fields, message = sink_fields(second)
    assert fields[b"X-Mail-Args"] == [b"<a@example.test> BODY=8BITMIME"]
    assert message == lf(EIGHT_BIT)


@pytest.mark.peers
async def test_sink_without_esmtp_or_8bitmime(sink: Callable[..., Sink]) -> None:
    peer = sink("-e", "-8")
    client = await SmtpClient.connect(route(peer.target), SETTINGS)
    try:
        assert not client.capabilities.esmtp
        env = envelope("b@x.test", ret="FULL")
        assert await deliver(client, env, EIGHT_BIT_BODY) == [DELIVERED]
        (result,) = await client.send(env, env.recipients, EIGHT_BIT)
        assert result.status == BOUNCED and result.reply.enhanced == "5.6.3"
    finally:
        await client.close()
    (dump,) = peer.messages()
    fields, message = sink_fields(dump)
    assert fields[b"X-Mail-Args"] == [b"<a@example.test>"]
    assert message.isascii() and b"na=C3=AFve" in message


@pytest.mark.peers
async def test_sink_refusals(sink: Callable[..., Sink]) -> None:
    hard, soft = sink("-f", "RCPT"), sink("-r", "MAIL")
    for peer, status in ((hard, BOUNCED), (soft, DEFERRED)):
        client = await SmtpClient.connect(route(peer.target), SETTINGS)
        try:
            env = envelope("b@x.test", "c@x.test")
            assert await deliver(client, env) == [status, status]
            assert client.usable
        finally:
            await client.close()
    assert hard.messages(wait=False) == [] and soft.messages(wait=False) == []


@pytest.mark.peers
async def test_sink_421_and_hang_up(sink: Callable[..., Sink]) -> None:
    for options in (("-Q", "RCPT"), ("-q", "DATA")):
        peer = sink(*options)
        client = await SmtpClient.connect(route(peer.target), SETTINGS)
        try:
            env = envelope("b@x.test")
            (result,) = await client.send(env, env.recipients, MESSAGE)
            assert result.status == DEFERRED and result.reply.code == 421
            assert not client.usable
        finally:
            await client.close()
