"""``postroom send`` against real listeners on 127.0.0.1.

Most tests talk to aiosmtpd running in a background thread, whose hooks
record what arrived and play the rejections. aiosmtpd has no CHUNKING
and answers pipelined commands one by one, so PIPELINING and BDAT are
checked against ``ScriptedServer``, a one-connection fake that withholds
its replies until a whole pipelined batch has arrived: a client that
waits for each reply would stall there and time out.
"""

from __future__ import annotations

import datetime
import email
import email.policy
import ipaddress
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from postroom.cli.main import main

HOST = "127.0.0.1"
SERVER_NAME = "mx.postroom.test"  # given to aiosmtpd so it never calls getfqdn()
QUEUED = "250 2.0.0 OK queued as 0TESTQUEUEID0"
NO_SUCH_USER = "550 5.1.1 <nobody@example.test>: Recipient address rejected"
AUTH_OK = AuthResult(success=True)

Run = Callable[..., tuple[int, str, str]]


def free_port() -> int:
    # aiosmtpd's Controller cannot listen on port 0 (it connects to its
    # own port to start up), so pick a free one first.
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Recorder:
    """aiosmtpd handler: keeps what arrived, refuses nobody@ recipients."""

    envelopes: list[Envelope] = field(default_factory=list)
    logins: list[tuple[bytes, bytes]] = field(default_factory=list)
    pipelining: bool = False

    async def handle_EHLO(self, server: Any, session: Session,
                          envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        if self.pipelining:
            responses.insert(1, "250-PIPELINING")
        return responses

    async def handle_RCPT(self, server: Any, session: Session,
                          envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if address.startswith("nobody@"):
            return NO_SUCH_USER
        if address.startswith("relay@"):
            return "550 5.7.1 Relaying denied"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Session,
                          envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return QUEUED

    def authenticate(self, server: Any, session: Session, envelope: Envelope,
                     mechanism: str, auth_data: Any) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        self.logins.append((auth_data.login, auth_data.password))
        ok = (auth_data.login, auth_data.password) == (b"alice", b"s3cret pw")
        return AUTH_OK if ok else AuthResult(success=False, handled=False)


@dataclass
class Certificate:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for 127.0.0.1, made for this test run."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address(HOST))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None),
                       critical=True)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    paths = Certificate(directory / "cert.pem", directory / "key.pem")
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return paths


@pytest.fixture
def smtpd() -> Iterator[Callable[..., tuple[Recorder, int]]]:
    """Start aiosmtpd servers on demand; all are stopped after the test."""
    controllers: list[Controller] = []

    def start(recorder: Recorder | None = None,
              **kwargs: Any) -> tuple[Recorder, int]:
        recorder = recorder or Recorder()
        port = free_port()
        kwargs.setdefault("auth_require_tls", False)
        controller = Controller(recorder, hostname=HOST, port=port,
                                server_hostname=SERVER_NAME,
                                authenticator=recorder.authenticate, **kwargs)
        controller.start()
        controllers.append(controller)
        return recorder, port

    yield start
    for controller in controllers:
        controller.stop()


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    """Run ``postroom send`` with *args*; return status, stdout, stderr."""

    def send(port: int, *args: str) -> tuple[int, str, str]:
        status = main(["send", "--server", f"{HOST}:{port}", "--timeout", "5",
                       *args])
        out, err = capsys.readouterr()
        return status, out, err

    return send


def parse(envelope: Envelope) -> EmailMessage:
    content = envelope.original_content
    assert isinstance(content, bytes)
    message = email.message_from_bytes(content, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def test_message_arrives_intact(smtpd: Any, run: Run, tmp_path: Path) -> None:
    recorder, port = smtpd()
    blob = bytes(range(256)) * 4
    attachment = tmp_path / "blob.bin"
    attachment.write_bytes(blob)

    status, out, err = run(
        port, "--from", "alice@example.test",
        "--to", "bob@example.test,carol@example.test",
        "--to", "dave@example.test", "--subject", "Quarterly report",
        "--header", "X-Trace: 42", "--attach", str(attachment),
        "--body", "First line\n.a line with a leading dot\n.\nlast line")

    assert (status, err) == (0, "")
    [envelope] = recorder.envelopes
    assert envelope.mail_from == "alice@example.test"
    assert envelope.rcpt_tos == ["bob@example.test", "carol@example.test",
                                 "dave@example.test"]
    content = envelope.original_content
    assert isinstance(content, bytes)
    assert content.count(b"\n") == content.count(b"\r\n")

    message = parse(envelope)
    assert message["Subject"] == "Quarterly report"
    assert message["From"] == "alice@example.test"
    assert message["X-Trace"] == "42"
    assert message["Date"] and message["Message-ID"].endswith("@example.test>")
    text, part = message.iter_parts()
    # The parser keeps the wire's CRLF inside a 7bit body.
    assert text.get_content().replace("\r\n", "\n") == (
        "First line\n.a line with a leading dot\n.\nlast line\n")
    assert part.get_filename() == "blob.bin"
    assert part.get_content() == blob

    lines = out.splitlines()
    assert lines[0] == f"* Connected to {HOST}:{port} from " + (
        lines[0].rpartition(" ")[2])
    assert lines[1].startswith(f"S: 220 {SERVER_NAME} ")
    size = len(envelope.original_content)
    for expected in ["C: EHLO [127.0.0.1]",
                     f"C: MAIL FROM:<alice@example.test> SIZE={size}",
                     "C: RCPT TO:<dave@example.test>", "C: DATA",
                     "C: ..a line with a leading dot", "C: ..", "C: .",
                     f"S: {QUEUED}", "C: QUIT"]:
        assert expected in lines
    assert lines.index("C: DATA") < lines.index(f"S: {QUEUED}")
    assert not any("↳" in line for line in lines)  # nothing failed


def test_rejected_recipient_exits_2_with_explanation(smtpd: Any,
                                                     run: Run) -> None:
    recorder, port = smtpd()

    status, out, err = run(port, "--to", "nobody@example.test")

    assert status == 2
    assert recorder.envelopes == []
    lines = out.splitlines()
    failure = lines.index(f"S: {NO_SUCH_USER}")
    assert lines[failure + 1].startswith("   ↳ The recipient mailbox does not "
                                         "exist")
    assert "C: DATA" not in lines and "C: QUIT" in lines
    assert err == ("postroom: server rejected RCPT TO:<nobody@example.test>: "
                   f"{NO_SUCH_USER}\n")


def test_partly_refused_recipients_still_get_the_message(smtpd: Any,
                                                          run: Run) -> None:
    recorder, port = smtpd()

    status, out, err = run(port, "--to", "relay@example.test,ok@example.test")

    assert status == 2
    assert [e.rcpt_tos for e in recorder.envelopes] == [["ok@example.test"]]
    assert ("   ↳ Delivery not authorized (policy), e.g. relaying denied: "
            "authenticate (AUTH) or send only to the server's own domains."
            ) in out.splitlines()
    assert "the other 1 recipient" in err


def test_quiet_prints_only_the_failure(smtpd: Any, run: Run) -> None:
    _, port = smtpd()

    status, out, err = run(port, "--quiet", "--to", "nobody@example.test")

    assert (status, out) == (2, "")
    first, second = err.splitlines()
    assert first.startswith("postroom: server rejected RCPT TO:")
    assert second.startswith("   ↳ The recipient mailbox does not exist")


def test_explain_flag_explains_every_reply(smtpd: Any, run: Run) -> None:
    _, port = smtpd()
    status, out, _ = run(port, "--explain", "--to", "ok@example.test")
    assert status == 0
    assert "   ↳ The server is ready" in out
    assert "   ↳ The server waits" not in out  # 354 has its own words
    assert "   ↳ The server is ready for the message" in out


def test_connection_refused_is_one_line_exit_1(run: Run) -> None:
    port = free_port()  # nothing listens there

    status, out, err = run(port, "--to", "bob@example.test")

    assert (status, out) == (1, "")
    assert err.count("\n") == 1
    assert err.startswith(f"postroom: connect to {HOST}:{port}: ")
    assert "refused" in err.lower()


def test_missing_attachment_fails_before_connecting(run: Run) -> None:
    port = free_port()  # a connection attempt would say "refused"

    status, out, err = run(port, "--to", "bob@example.test",
                           "--attach", "/nonexistent/report.pdf")

    assert (status, out) == (1, "")
    assert err == ("postroom: --attach /nonexistent/report.pdf: "
                   "No such file or directory\n")


def test_implicit_tls_insecure(smtpd: Any, run: Run,
                               certificate: Certificate) -> None:
    recorder, port = smtpd(ssl_context=certificate.server_context())

    status, out, err = run(port, "--tls", "--insecure",
                           "--to", "bob@example.test")

    assert (status, err) == (0, "")
    assert len(recorder.envelopes) == 1
    lines = out.splitlines()
    assert lines[1].startswith("* TLS: TLSv1.")
    assert lines[2] == (f"* TLS peer: CN={HOST}; issuer CN={HOST}; "
                        "NOT verified (--insecure)")
    assert lines[3].startswith("S: 220 ")  # TLS came before the greeting


def test_starttls_verifies_with_cafile(smtpd: Any, run: Run,
                                       certificate: Certificate) -> None:
    recorder, port = smtpd(tls_context=certificate.server_context(),
                           require_starttls=True)

    status, out, err = run(port, "--starttls", "--cafile",
                           str(certificate.cert), "--to", "bob@example.test")

    assert (status, err) == (0, "")
    assert len(recorder.envelopes) == 1
    lines = out.splitlines()
    start = lines.index("C: STARTTLS")
    assert lines[start + 1].startswith("S: 220")
    assert lines[start + 3].endswith("; verified")
    assert lines[start + 4] == "C: EHLO [127.0.0.1]"  # RFC 3207: greet again
    assert lines.count("C: EHLO [127.0.0.1]") == 2


def test_starttls_untrusted_certificate_is_a_local_error(
        smtpd: Any, run: Run, certificate: Certificate) -> None:
    recorder, port = smtpd(tls_context=certificate.server_context())

    status, _, err = run(port, "--starttls", "--to", "bob@example.test")

    assert status == 1
    assert recorder.envelopes == []
    assert err.count("\n") == 1
    assert err.startswith(f"postroom: TLS handshake with {HOST}:{port} failed")
    assert "self-signed" in err or "verify failed" in err


def test_starttls_required_but_not_offered(smtpd: Any, run: Run) -> None:
    _, port = smtpd()
    status, out, err = run(port, "--starttls", "--to", "bob@example.test")
    assert status == 2
    assert err == "postroom: STARTTLS: server does not advertise it\n"
    assert "C: QUIT" in out


def test_auth_plain_over_starttls_is_redacted(smtpd: Any, run: Run,
                                              certificate: Certificate,
                                              tmp_path: Path) -> None:
    recorder, port = smtpd(tls_context=certificate.server_context(),
                           auth_require_tls=True)
    secret = tmp_path / "password"
    secret.write_text("s3cret pw\n")

    status, out, err = run(port, "--starttls", "--insecure",
                           "--auth-user", "alice",
                           "--auth-password-file", str(secret),
                           "--to", "bob@example.test")

    assert (status, err) == (0, "")
    assert recorder.logins == [(b"alice", b"s3cret pw")]
    assert "C: AUTH PLAIN [redacted]" in out.splitlines()
    assert "s3cret" not in out and "YWxpY2" not in out  # base64 of "alice"


def test_auth_login_bad_password_exits_2(smtpd: Any, run: Run) -> None:
    recorder, port = smtpd()

    status, out, err = run(port, "--auth-user", "alice", "--auth-mech",
                           "login", "--auth-password", "wrong",
                           "--to", "bob@example.test")

    assert status == 2
    assert recorder.envelopes == []
    lines = out.splitlines()
    assert "C: [redacted user name]" in lines
    assert "C: [redacted password]" in lines
    assert "* Warning: sending credentials without TLS" in lines
    assert any(line.startswith("S: 535") for line in lines)
    assert "   ↳ The authentication credentials were rejected" in out
    assert err.startswith("postroom: server rejected AUTH LOGIN (password): "
                          "535")


def test_raw_message_with_smtputf8(smtpd: Any, run: Run,
                                   tmp_path: Path) -> None:
    recorder, port = smtpd()
    raw = tmp_path / "message.eml"
    # Bare LF line ends on purpose: they must go out as CRLF.
    raw.write_bytes("From: <ünïcode@example.test>\nTo: <bob@example.test>\n"
                    "Subject: grüße\n\nBody ok\n.\n".encode())

    status, out, err = run(port, "--smtputf8", "--raw", "--body-file",
                           str(raw), "--header", "X-Added: yes",
                           "--from", "ünïcode@example.test",
                           "--to", "bob@example.test")

    assert (status, err) == (0, "")
    [envelope] = recorder.envelopes
    assert "SMTPUTF8" in envelope.mail_options
    assert envelope.original_content == (
        "X-Added: yes\r\nFrom: <ünïcode@example.test>\r\n"
        "To: <bob@example.test>\r\nSubject: grüße\r\n\r\nBody ok\r\n.\r\n"
    ).encode()
    assert "C: MAIL FROM:<ünïcode@example.test> SIZE=" in out


def test_non_ascii_sender_needs_smtputf8(run: Run) -> None:
    status, _, err = run(free_port(), "--from", "ü@example.test",
                         "--to", "bob@example.test")
    assert status == 1
    assert "needs --smtputf8" in err


def test_dsn_without_server_support_is_refused(smtpd: Any, run: Run) -> None:
    _, port = smtpd()
    status, out, err = run(port, "--dsn-notify", "failure",
                           "--to", "bob@example.test")
    assert status == 2
    assert err == "postroom: EHLO: server does not advertise DSN\n"
    assert "C: MAIL" not in out


def test_pipelining_falls_back_when_not_offered(smtpd: Any, run: Run) -> None:
    recorder, port = smtpd()
    status, out, _ = run(port, "--pipelining", "--to", "bob@example.test")
    assert status == 0
    assert len(recorder.envelopes) == 1
    assert "* Server does not advertise PIPELINING" in out


def test_pipelining_with_aiosmtpd(smtpd: Any, run: Run) -> None:
    recorder, port = smtpd(Recorder(pipelining=True))
    status, out, _ = run(port, "--pipelining",
                         "--to", "bob@example.test,nobody@example.test")
    assert status == 2  # one recipient refused ...
    assert len(recorder.envelopes) == 1  # ... the other one got it
    lines = out.splitlines()
    mail = next(i for i, line in enumerate(lines)
                if line.startswith("C: MAIL"))
    assert lines[mail + 1:mail + 4] == [
        "C: RCPT TO:<bob@example.test>", "C: RCPT TO:<nobody@example.test>",
        "C: DATA"]


class ScriptedServer:
    """One connection: greets, advertises *features*, records the bytes.

    With PIPELINING among the features, it reads MAIL, the RCPT lines
    and (with *data_in_batch*) DATA before answering any of them, so
    only a client that really pipelines gets through. BDAT chunks are
    read by their declared size. STARTTLS is answered with a 220 plus
    the *inject* bytes in the same write, then the handshake.
    """

    def __init__(self, features: list[str], recipients: int = 1,
                 data_in_batch: bool = True,
                 tls: ssl.SSLContext | None = None,
                 inject: bytes = b"") -> None:
        self.features = features
        self.recipients = recipients
        self.data_in_batch = data_in_batch
        self.tls = tls
        self.inject = inject
        self.commands: list[bytes] = []
        self.message = b""
        self.listener = socket.create_server((HOST, 0))
        self.port: int = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        conn, _ = self.listener.accept()
        conn.settimeout(5)
        try:
            self.converse(conn)
        finally:
            conn.close()

    def converse(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        conn.sendall(b"220 scripted.test ESMTP\r\n")
        while line := reader.readline():
            self.commands.append(line)
            verb = line[:4].upper()
            if verb == b"EHLO":
                body = ["scripted.test", *self.features]
                reply = "".join(f"250-{f}\r\n" for f in body[:-1])
                conn.sendall(f"{reply}250 {body[-1]}\r\n".encode())
            elif verb == b"STAR" and self.tls is not None:
                conn.sendall(b"220 2.0.0 go ahead\r\n" + self.inject)
                conn = self.tls.wrap_socket(conn, server_side=True)
                reader = conn.makefile("rb")
                self.features.remove("STARTTLS")
            elif verb == b"MAIL" and "PIPELINING" in self.features:
                self.mail_batch(conn, reader)
            elif verb in (b"MAIL", b"RCPT"):
                conn.sendall(b"250 2.0.0 ok\r\n")
            elif verb == b"DATA":
                conn.sendall(b"354 go\r\n")
                self.data(conn, reader)
            elif verb == b"BDAT":
                self.message += reader.read(int(line.split()[1]))
                conn.sendall(b"250 2.0.0 chunk ok\r\n")
            elif verb == b"QUIT":
                conn.sendall(b"221 2.0.0 bye\r\n")
                return
            else:
                conn.sendall(b"502 5.5.1 unexpected\r\n")

    def mail_batch(self, conn: socket.socket, reader: Any) -> None:
        batch = self.recipients + (1 if self.data_in_batch else 0)
        self.commands += [reader.readline() for _ in range(batch)]
        replies = ["250 2.1.0 ok"] + ["250 2.1.5 ok"] * self.recipients
        if self.data_in_batch:
            replies.append("354 go")
        conn.sendall("".join(f"{r}\r\n" for r in replies).encode())
        if self.data_in_batch:
            self.data(conn, reader)

    def data(self, conn: socket.socket, reader: Any) -> None:
        while (line := reader.readline()) not in (b".\r\n", b""):
            self.message += line
        conn.sendall(f"{QUEUED}\r\n".encode())

    def close(self) -> None:
        self.thread.join(5)
        self.listener.close()


def test_pipelined_data_goes_in_one_batch_and_is_dot_stuffed(
        run: Run) -> None:
    server = ScriptedServer(["PIPELINING", "SIZE 1000000", "DSN"],
                            recipients=2, data_in_batch=True)
    status, out, err = run(
        server.port, "--pipelining", "--timeout", "3", "--raw",
        "--body", "Subject: dots\n\n.leading\nmiddle.\n",
        "--dsn-notify", "failure,delay", "--dsn-ret", "hdrs",
        "--envid", "a+b=c", "--to", "x@example.test,y@example.test")
    server.close()

    assert (status, err) == (0, "")
    assert server.commands[1:5] == [
        b"MAIL FROM:<postroom-send@localhost> SIZE=36 RET=HDRS "
        b"ENVID=a+2Bb+3Dc\r\n",
        b"RCPT TO:<x@example.test> NOTIFY=FAILURE,DELAY\r\n",
        b"RCPT TO:<y@example.test> NOTIFY=FAILURE,DELAY\r\n",
        b"DATA\r\n"]
    assert server.message == b"Subject: dots\r\n\r\n..leading\r\nmiddle.\r\n"
    lines = out.splitlines()
    # The transcript shows the batch first, then the replies in order.
    data = lines.index("C: DATA")
    assert lines[data - 3].startswith("C: MAIL FROM:")
    assert lines[data + 1:data + 5] == [
        "S: 250 2.1.0 ok", "S: 250 2.1.5 ok", "S: 250 2.1.5 ok", "S: 354 go"]


def test_bdat_sends_exact_chunks_without_stuffing(run: Run) -> None:
    server = ScriptedServer(["PIPELINING", "CHUNKING", "8BITMIME"],
                            recipients=1, data_in_batch=False)
    body = "Subject: chunks\n\n.dot stays single\n" + "x" * 100 + "\n"
    status, out, err = run(server.port, "--pipelining", "--bdat",
                           "--chunk-size", "40", "--8bitmime", "--raw",
                           "--body", body, "--to", "x@example.test")
    server.close()

    expected = body.replace("\n", "\r\n").encode()
    assert (status, err) == (0, "")
    assert server.message == expected
    bdats = [c for c in server.commands if c.startswith(b"BDAT")]
    assert bdats[:-1] == [b"BDAT 40\r\n"] * (len(expected) // 40)
    assert bdats[-1] == f"BDAT {len(expected) % 40} LAST\r\n".encode()
    assert server.commands[1] == (b"MAIL FROM:<postroom-send@localhost> "
                                  b"BODY=8BITMIME\r\n")
    assert "* Message accepted: 250 2.0.0 chunk ok" in out


def test_replies_injected_before_starttls_are_dropped(
        run: Run, certificate: Certificate) -> None:
    # Response injection: bytes queued behind the 220 to STARTTLS came
    # in clear and must not be read as replies inside the TLS session.
    server = ScriptedServer(["STARTTLS"], tls=certificate.server_context(),
                            inject=b"250 2.0.0 injected\r\n")
    status, out, err = run(server.port, "--starttls", "--insecure",
                           "--to", "x@example.test")
    server.close()

    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert ("* Warning: dropped 20 bytes the server sent before the TLS "
            "handshake (possible reply injection)") in lines
    assert "S: 250 2.0.0 injected" not in lines
    assert server.message.endswith(b"\r\n")
