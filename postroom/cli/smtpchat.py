"""The SMTP client conversation behind ``postroom send``.

A troubleshooting client, not a mail library. Two layers:

- ``Chat`` owns one blocking socket (plain, implicit TLS, or upgraded by
  STARTTLS), writes the lines it is given and reads whole replies. Every
  line in either direction goes to a ``Transcript``, so the user sees
  the entire dialogue.
- ``Dialogue`` runs one mail transaction over a ``Chat``: greeting,
  EHLO, STARTTLS, AUTH, MAIL, RCPT, then DATA or BDAT, QUIT; one method
  per command. ``Options`` says which extensions to use.

Two kinds of failure, kept apart because the CLI maps them to different
exit statuses:

- ``ChatError`` (a ``PostroomError``): nothing usable came back, i.e. a
  refused connection, timeout, failed TLS handshake, or a peer that
  hung up or sent garbage. Our side of the wire is the problem, or the
  wire is.
- ``Rejected``: the server answered, and said no (or lacks an extension
  we were told to use). It carries the step and the reply.

Negative replies never raise from ``Chat``; ``Dialogue`` judges them.
"""

from __future__ import annotations

import base64
import contextlib
import re
import socket
import ssl
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509

from postroom import explain
from postroom.errors import PostroomError

# XXX: reply parsing lives here rather than in a sans-I/O client core
# under protocol/ because that core does not exist yet; once it does,
# this module should shrink to moving bytes and run the core instead.

# RFC 5321 §4.5.3.1.5 caps a reply line at 512 octets; real servers
# exceed it, so we allow far more but still bound memory.
MAX_LINE = 64 * 1024


class ChatError(PostroomError):
    """A local or transport failure: no usable reply was received."""


class Transcript(Protocol):
    """Where the conversation is shown.

    ``client``, ``server`` and ``note`` each get one line without line
    end; ``reply`` is called once per complete reply, after its lines
    went to ``server``; ``tls`` once per finished handshake.
    """

    def client(self, line: str) -> None: ...
    def server(self, line: str) -> None: ...
    def note(self, line: str) -> None: ...
    def reply(self, reply: Reply) -> None: ...
    def tls(self, info: TlsInfo) -> None: ...


@dataclass(frozen=True)
class Reply:
    """One complete, possibly multi-line, server reply."""

    code: int
    lines: tuple[str, ...]  # the text after "250-" / "250 " on each line

    @property
    def enhanced(self) -> str | None:
        return explain.parse_enhanced(self.lines[0])[0] if self.lines else None

    @property
    def text(self) -> str:
        """The reply text without codes, lines joined by spaces."""
        return " ".join(explain.parse_enhanced(line)[1] for line in self.lines)

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 400

    def summary(self) -> str:
        """The first line as the server sent it, e.g. ``550 5.1.1 ...``."""
        first = self.lines[0] if self.lines else ""
        return f"{self.code} {first}".rstrip()


@dataclass(frozen=True)
class TlsInfo:
    """What the TLS handshake settled on, for the transcript."""

    version: str
    cipher: str
    bits: int
    peer_subject: str
    peer_issuer: str
    verified: bool


class Chat:
    """One SMTP connection. Not thread-safe; used by one command run."""

    def __init__(self, sock: socket.socket, transcript: Transcript, peer: str) -> None:
        self._sock = sock
        self._buffer = bytearray()
        self._transcript = transcript
        self.peer = peer
        self.tls: TlsInfo | None = None

    @classmethod
    def connect(
        cls,
        host: str,
        port: int,
        timeout: float,
        transcript: Transcript,
        tls: ssl.SSLContext | None = None,
    ) -> Chat:
        """Open a connection; with *tls*, handshake at once (RFC 8314)."""
        peer = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        with _failing_as(f"connect to {peer}"):
            sock = socket.create_connection((host, port), timeout=timeout)
        local = sock.getsockname()
        transcript.note(f"Connected to {peer} from {local[0]}:{local[1]}")
        chat = cls(sock, transcript, peer)
        if tls is not None:
            try:
                transcript.tls(chat.start_tls(tls, host))
            except ChatError:
                chat.close()
                raise
        return chat

    @property
    def local_address(self) -> str:
        address: str = self._sock.getsockname()[0]
        return address

    def start_tls(self, context: ssl.SSLContext, server_name: str) -> TlsInfo:
        """Run the TLS handshake on the open connection.

        Bytes already read but not consumed are dropped first: after
        STARTTLS nothing sent in clear may be trusted (RFC 3207 §4.2),
        and a server or attacker that queued data behind the 220 is
        trying to inject replies into the TLS session.
        """
        if self._buffer:
            self._transcript.note(
                f"Warning: dropped {len(self._buffer)} bytes the server sent "
                "before the TLS handshake (possible reply injection)"
            )
            self._buffer.clear()
        with _failing_as(f"TLS handshake with {self.peer} failed"):
            self._sock = context.wrap_socket(self._sock, server_hostname=server_name)
        assert isinstance(self._sock, ssl.SSLSocket)
        self.tls = _describe(self._sock, context)
        return self.tls

    def send(self, line: str, shown: str | None = None) -> None:
        """Send one command line; *shown* replaces it in the transcript."""
        self.send_many([line], [shown])

    def send_many(
        self, lines: Sequence[str], shown: Sequence[str | None] | None = None
    ) -> None:
        """Send several command lines in one write (RFC 2920 pipelining)."""
        for index, line in enumerate(lines):
            if "\r" in line or "\n" in line:
                # A line break inside a command would smuggle a second
                # command past whoever built the first.
                raise ChatError(f"refusing to send a line break in {line!r}")
            masked = shown[index] if shown is not None else None
            self._transcript.client(masked if masked is not None else line)
        payload = "".join(f"{line}\r\n" for line in lines)
        self.write(payload.encode("utf-8"))

    def send_data(self, data: bytes, shown: Iterable[str]) -> None:
        """Send message octets as they are; *shown* is what to print."""
        for line in shown:
            self._transcript.client(line)
        self.write(data)

    def write(self, data: bytes) -> None:
        with _failing_as(f"sending to {self.peer}"):
            self._sock.sendall(data)

    def read_reply(self) -> Reply:
        """Read one complete reply, showing each line as it arrives."""
        code: int | None = None
        texts: list[str] = []
        while True:
            line = self._read_line()
            self._transcript.server(line)
            # RFC 5321 §4.2: "ddd-text" continues, "ddd text" or "ddd" ends.
            if (
                len(line) < 3
                or not line[:3].isdigit()
                or (len(line) > 3 and line[3] not in " -")
            ):
                raise ChatError(
                    f"{self.peer} sent a malformed reply line: {line[:80]!r}"
                )
            this = int(line[:3])
            if code is not None and this != code:
                raise ChatError(
                    f"{self.peer} changed reply code within a reply: {code} then {this}"
                )
            code = this
            texts.append(line[4:])
            if len(line) == 3 or line[3] == " ":
                return Reply(code, tuple(texts))

    def close(self) -> None:
        self._sock.close()

    def _read_line(self) -> str:
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                raw = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                # Tolerate a bare LF: we only report what the server said.
                return raw.rstrip(b"\r").decode("utf-8", "replace")
            if len(self._buffer) > MAX_LINE:
                raise ChatError(f"{self.peer} sent a reply line over {MAX_LINE} octets")
            with _failing_as(f"waiting for a reply from {self.peer}"):
                chunk = self._sock.recv(65536)
            if not chunk:
                raise ChatError(f"{self.peer} closed the connection")
            self._buffer += chunk


@contextlib.contextmanager
def _failing_as(what: str) -> Iterator[None]:
    """Turn socket and TLS failures into one-line ``ChatError``s."""
    try:
        yield
    except ssl.SSLCertVerificationError as e:
        raise ChatError(
            f"{what}: {e.verify_message or e.reason} (trust "
            "it with --cafile, or skip checks with --insecure)"
        ) from e
    except ssl.SSLError as e:  # before OSError, its base class
        raise ChatError(f"{what}: {e.reason or e}") from e
    except TimeoutError as e:
        raise ChatError(f"{what}: timed out") from e
    except OSError as e:
        raise ChatError(f"{what}: {e.strerror or e}") from e


def _describe(sock: ssl.SSLSocket, context: ssl.SSLContext) -> TlsInfo:
    name, _, bits = sock.cipher() or ("?", "?", 0)
    subject = issuer = "(no certificate)"
    der = sock.getpeercert(binary_form=True)
    if der:
        # With verification off, getpeercert() returns an empty dict, so
        # decode the DER ourselves to show the subject either way.
        cert = x509.load_der_x509_certificate(der)
        subject = cert.subject.rfc4514_string() or "(empty subject)"
        issuer = cert.issuer.rfc4514_string() or "(empty issuer)"
    return TlsInfo(
        version=sock.version() or "?",
        cipher=name,
        bits=bits or 0,
        peer_subject=subject,
        peer_issuer=issuer,
        verified=context.verify_mode != ssl.CERT_NONE,
    )


@dataclass(frozen=True)
class Options:
    """Which parts of ESMTP a ``Dialogue`` uses; all off by default."""

    ehlo: str | None = None  # the name to greet with; None: address literal
    helo: bool = False  # greet with plain HELO: no extensions at all
    starttls: ssl.SSLContext | None = None  # require STARTTLS with this
    auth_user: str | None = None
    auth_password: str = ""
    auth_mech: str | None = None  # PLAIN or LOGIN; None: best offered
    pipelining: bool = False  # RFC 2920, when the server offers it
    bdat: bool = False  # RFC 3030 CHUNKING instead of DATA
    chunk_size: int = 65536
    eightbitmime: bool = False  # RFC 6152 BODY=8BITMIME
    smtputf8: bool = False  # RFC 6531
    notify: str | None = None  # RFC 3461 RCPT NOTIFY=
    ret: str | None = None  # RFC 3461 MAIL RET=
    envid: str | None = None  # RFC 3461 MAIL ENVID=, not yet xtext-encoded


class Rejected(Exception):
    """The server refused *step*.

    *reply* is the refusal, or None when the server lacks an extension
    the options require; *reason* adds what the reply alone does not say.
    """

    def __init__(self, step: str, reply: Reply | None, reason: str = "") -> None:
        super().__init__(step)
        self.step = step
        self.reply = reply
        self.reason = reason


class Dialogue:
    """One mail transaction over *chat*, one method per SMTP command.

    ``run()`` returns the reply that accepted the message, raises
    ``Rejected`` when the server refuses a step, and ``ChatError`` when
    the conversation breaks. After ``Rejected`` the caller should still
    ``quit()`` unless the refusal was a 421, which closes the session.
    """

    def __init__(
        self, chat: Chat, transcript: Transcript, options: Options, server_name: str
    ) -> None:
        self.chat = chat
        self.transcript = transcript
        self.options = options
        self.server_name = server_name  # for SNI and certificate checks
        self.features: dict[str, str] = {}

    def run(self, sender: str, recipients: Sequence[str], message: bytes) -> Reply:
        """Send *message* (CRLF line ends, not dot-stuffed)."""
        opts = self.options
        self.expect("greeting", 220)
        self.hello()
        if opts.starttls is not None:
            self.starttls(opts.starttls)
        if opts.auth_user is not None:
            self.auth(opts.auth_user, opts.auth_password)
        self.require_extensions()

        mail = f"MAIL FROM:<{sender}>{self.mail_params(len(message))}"
        notify = f" NOTIFY={opts.notify}" if opts.notify else ""
        rcpts = [f"RCPT TO:<{r}>{notify}" for r in recipients]
        refused = self.envelope(mail, rcpts)
        accepted = self.bdat(message) if opts.bdat else self.data(message)
        self.transcript.note(f"Message accepted: {accepted.summary()}")
        if refused:
            others = len(rcpts) - len(refused)
            raise Rejected(
                refused[0][0],
                refused[0][1],
                f"the message went to the other {others} "
                f"recipient{'s' if others != 1 else ''}",
            )
        return accepted

    def read(self) -> Reply:
        reply = self.chat.read_reply()
        self.transcript.reply(reply)
        return reply

    def expect(self, step: str, *codes: int) -> Reply:
        reply = self.read()
        if reply.code not in codes:
            raise Rejected(step, reply)
        return reply

    def hello(self) -> None:
        name = self.options.ehlo or address_literal(self.chat.local_address)
        self.features = {}
        if self.options.helo:
            self.chat.send(f"HELO {name}")
            self.expect("HELO", 250)
            return
        self.chat.send(f"EHLO {name}")
        reply = self.read()
        if reply.code in (500, 502):
            # RFC 5321 §3.2: a server that does not know EHLO gets HELO.
            self.transcript.note("Server does not know EHLO; trying HELO")
            self.chat.send(f"HELO {name}")
            self.expect("HELO", 250)
            return
        if reply.code != 250:
            raise Rejected("EHLO", reply)
        for line in reply.lines[1:]:
            keyword, _, params = line.partition(" ")
            self.features[keyword.upper()] = params

    def starttls(self, context: ssl.SSLContext) -> None:
        if "STARTTLS" not in self.features:
            raise Rejected("STARTTLS", None, "server does not advertise it")
        self.chat.send("STARTTLS")
        self.expect("STARTTLS", 220)
        self.transcript.tls(self.chat.start_tls(context, self.server_name))
        # RFC 3207 §4.2: forget everything learnt in clear and greet again.
        self.hello()

    def auth(self, user: str, password: str) -> None:
        if "AUTH" not in self.features:
            hint = "" if self.chat.tls else " (often offered only after TLS)"
            raise Rejected("AUTH", None, f"server does not advertise it{hint}")
        offered = self.features["AUTH"].upper().split()
        mech = self.options.auth_mech or next(
            (m for m in ("PLAIN", "LOGIN") if m in offered), None
        )
        if mech is None or mech not in offered:
            raise Rejected(
                "AUTH",
                None,
                "server offers "
                f"{' '.join(offered) or 'nothing'}, "
                f"not {mech or 'PLAIN or LOGIN'}",
            )
        if self.chat.tls is None:
            self.transcript.note("Warning: sending credentials without TLS")

        if mech == "PLAIN":
            # RFC 4616: authzid NUL authcid NUL password, as an initial
            # response (RFC 4954 §4) to save a round trip.
            blob = b64(f"\0{user}\0{password}")
            self.chat.send(f"AUTH PLAIN {blob}", "AUTH PLAIN [redacted]")
            self.expect("AUTH PLAIN", 235)
            return
        self.chat.send("AUTH LOGIN")
        self.expect("AUTH LOGIN", 334)
        self.chat.send(b64(user), "[redacted user name]")
        self.expect("AUTH LOGIN (user name)", 334)
        self.chat.send(b64(password), "[redacted password]")
        self.expect("AUTH LOGIN (password)", 235)

    def require_extensions(self) -> None:
        # Sending a parameter the server never offered would only earn a
        # 555 that explains less than we can say here.
        opts = self.options
        needed = {
            "8BITMIME": opts.eightbitmime,
            "SMTPUTF8": opts.smtputf8,
            "CHUNKING": opts.bdat,
            "DSN": bool(opts.notify or opts.ret or opts.envid),
        }
        for keyword, wanted in needed.items():
            if wanted and keyword not in self.features:
                raise Rejected("EHLO", None, f"server does not advertise {keyword}")
        if opts.pipelining and "PIPELINING" not in self.features:
            self.transcript.note(
                "Server does not advertise PIPELINING; sending one command at a time"
            )

    def mail_params(self, size: int) -> str:
        opts = self.options
        params = []
        if "SIZE" in self.features:
            params.append(f"SIZE={size}")  # RFC 1870 §6
        if opts.eightbitmime:
            params.append("BODY=8BITMIME")
        if opts.smtputf8:
            params.append("SMTPUTF8")
        if opts.ret:
            params.append(f"RET={opts.ret}")
        if opts.envid:
            params.append(f"ENVID={xtext(opts.envid)}")
        return "".join(f" {p}" for p in params)

    def envelope(self, mail: str, rcpts: list[str]) -> list[tuple[str, Reply]]:
        """Send MAIL, the RCPTs and (unless BDAT) DATA; return refusals.

        Raises ``Rejected`` when MAIL or every RCPT is refused.
        """
        with_data = not self.options.bdat
        if self.options.pipelining and "PIPELINING" in self.features:
            return self.envelope_pipelined(mail, rcpts, with_data)

        self.chat.send(mail)
        self.expect(mail, 250)
        refused = []
        for rcpt in rcpts:
            self.chat.send(rcpt)
            reply = self.read()
            if reply.code not in (250, 251):
                refused.append((rcpt, reply))
        if len(refused) == len(rcpts):
            raise Rejected(*refused[0])
        if with_data:
            self.chat.send("DATA")
            self.expect("DATA", 354)
        return refused

    def envelope_pipelined(
        self, mail: str, rcpts: list[str], with_data: bool
    ) -> list[tuple[str, Reply]]:
        # RFC 2920 §3.1: MAIL, the RCPTs and DATA go in one write; the
        # replies then come back in the same order.
        self.chat.send_many([mail, *rcpts] + (["DATA"] if with_data else []))
        mail_reply = self.read()
        replies = [(rcpt, self.read()) for rcpt in rcpts]
        data_reply = self.read() if with_data else None

        refused = [(r, reply) for r, reply in replies if reply.code not in (250, 251)]
        doomed = mail_reply.code != 250 or len(refused) == len(rcpts)
        if data_reply is not None and data_reply.code == 354 and doomed:
            # RFC 2920 §3.1: a server that said 354 with no valid
            # recipient gets an empty message to end the transaction.
            self.chat.send_data(b".\r\n", ["."])
            self.read()
        if mail_reply.code != 250:
            raise Rejected(mail, mail_reply)
        if len(refused) == len(rcpts):
            raise Rejected(*refused[0])
        if data_reply is not None and data_reply.code != 354:
            raise Rejected("DATA", data_reply)
        return refused

    def data(self, message: bytes) -> Reply:
        stuffed = dot_stuff(message) + b".\r\n"
        self.chat.send_data(stuffed, show_lines(stuffed))
        return self.expect("end of DATA (the message)", 250)

    def bdat(self, message: bytes) -> Reply:
        # RFC 3030 §2: each chunk goes exactly as counted, without
        # dot-stuffing, and gets its own reply.
        size = self.options.chunk_size
        chunks = [message[i : i + size] for i in range(0, len(message), size)] or [b""]
        for chunk in chunks[:-1]:
            self.send_chunk(f"BDAT {len(chunk)}", chunk)
        return self.send_chunk(f"BDAT {len(chunks[-1])} LAST", chunks[-1])

    def send_chunk(self, command: str, chunk: bytes) -> Reply:
        self.chat.send(command)
        self.chat.send_data(chunk, show_lines(chunk))
        return self.expect(command, 250)

    def quit(self) -> None:
        # The outcome is decided by now; a server that drops the line
        # instead of answering QUIT changes nothing.
        try:
            self.chat.send("QUIT")
            self.read()
        except ChatError:
            pass


def address_literal(ip: str) -> str:
    # RFC 5321 §4.1.3: a client without a meaningful name greets with
    # its address; we never look names up, so this is the honest choice.
    return f"[IPv6:{ip}]" if ":" in ip else f"[{ip}]"


def xtext(text: str) -> str:
    """RFC 3461 §4 xtext: '+', '=' and non-printables become +XX."""
    out = []
    for byte in text.encode("utf-8"):
        char = chr(byte)
        out.append(char if 33 <= byte <= 126 and char not in "+=" else f"+{byte:02X}")
    return "".join(out)


def b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def dot_stuff(data: bytes) -> bytes:
    """Double each leading dot (RFC 5321 §4.5.2); *data* uses CRLF."""
    return re.sub(rb"(?m)^\.", b"..", data)


def show_lines(data: bytes) -> list[str]:
    """Message octets as transcript lines."""
    lines = data.decode("utf-8", "replace").split("\r\n")
    return lines[:-1] if lines and lines[-1] == "" else lines
