"""``postroom send``: send one message and show the whole SMTP dialogue.

A troubleshooting client in the spirit of swaks. It prints every line it
sends (``C:``), every line it receives (``S:``), notes such as the TLS
handshake (``*``), and under each failed reply a plain explanation from
``postroom.explain``.

Exit status: 0 when the server accepted the message for every
recipient, 2 when the server said no to something (the failing step is
named on stderr), 1 for local failures: bad options, unreadable files,
refused connections, TLS failures, timeouts. Local failures are checked
before connecting, so a typo never costs a half-finished transaction.
"""

from __future__ import annotations

import argparse
import email.policy
import email.utils
import getpass
import mimetypes
import re
import ssl
import sys
from email.message import EmailMessage
from pathlib import Path

from postroom import explain
from postroom.cli import smtpchat
from postroom.cli.smtpchat import Reply
from postroom.errors import PostroomError

EXIT_ACCEPTED = 0
EXIT_LOCAL = 1  # what main() returns for any PostroomError we raise
EXIT_REJECTED = 2

DEFAULT_SERVER = "127.0.0.1:2525"
DEFAULT_BODY = "This is a test message sent by postroom send.\n"


class SendError(PostroomError):
    """A problem on our side, found before or while talking to the server."""


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    p = subparsers.add_parser(
        "send",
        help="send a test message and show the SMTP dialogue",
        description="Send one message over SMTP and print the conversation. "
        "Exit 0: accepted; 2: the server refused something; "
        "1: local error.",
    )
    p.add_argument(
        "--server",
        default=DEFAULT_SERVER,
        metavar="HOST[:PORT]",
        help=f"server to talk to (default {DEFAULT_SERVER}; "
        "without a port: 25, or 465 with --tls)",
    )
    p.add_argument(
        "--from",
        dest="sender",
        default="postroom-send@localhost",
        metavar="ADDRESS",
        help="envelope sender ('' for <>)",
    )
    p.add_argument(
        "--to",
        action="append",
        required=True,
        metavar="ADDRESS",
        help="recipient; repeat or give a comma list",
    )
    hello = p.add_mutually_exclusive_group()
    hello.add_argument(
        "--ehlo", metavar="NAME", help="name for EHLO (default: our address literal)"
    )
    hello.add_argument(
        "--helo", metavar="NAME", help="greet with plain HELO instead (no extensions)"
    )

    tls = p.add_argument_group("TLS")
    mode = tls.add_mutually_exclusive_group()
    mode.add_argument(
        "--starttls",
        action="store_true",
        help="require STARTTLS (RFC 3207) before anything else",
    )
    mode.add_argument(
        "--tls", action="store_true", help="implicit TLS from the first byte (RFC 8314)"
    )
    tls.add_argument(
        "--insecure", action="store_true", help="do not verify the server certificate"
    )
    tls.add_argument(
        "--cafile", metavar="FILE", help="trust the CA certificates in FILE (PEM)"
    )

    auth = p.add_argument_group("authentication")
    auth.add_argument("--auth-user", metavar="USER")
    auth.add_argument(
        "--auth-password",
        metavar="PASSWORD",
        help="visible to other local users; prefer the file",
    )
    auth.add_argument(
        "--auth-password-file",
        metavar="FILE",
        help="read the password from the first line of FILE",
    )
    auth.add_argument(
        "--auth-mech",
        type=str.upper,
        choices=("PLAIN", "LOGIN"),
        help="mechanism (default: PLAIN if offered, else LOGIN)",
    )

    msg = p.add_argument_group("message")
    msg.add_argument("--subject", help="Subject header")
    msg.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="add or replace a header",
    )
    body = msg.add_mutually_exclusive_group()
    body.add_argument("--body", metavar="TEXT", help="body text")
    body.add_argument(
        "--body-file", metavar="FILE", help="read the body from FILE ('-' for stdin)"
    )
    msg.add_argument(
        "--raw",
        action="store_true",
        help="the body is a complete RFC 5322 message; send it "
        "as is (only --header lines are prepended)",
    )
    msg.add_argument(
        "--attach",
        action="append",
        default=[],
        metavar="FILE",
        help="attach FILE (repeatable)",
    )

    ext = p.add_argument_group("SMTP extensions")
    ext.add_argument(
        "--pipelining",
        action="store_true",
        help="send MAIL, RCPT and DATA in one write (RFC 2920)",
    )
    ext.add_argument(
        "--bdat",
        action="store_true",
        help="send the message with BDAT (RFC 3030 CHUNKING)",
    )
    ext.add_argument("--chunk-size", type=int, default=65536, metavar="OCTETS")
    ext.add_argument(
        "--smtputf8",
        action="store_true",
        help="allow UTF-8 addresses and headers (RFC 6531)",
    )
    ext.add_argument(
        "--8bitmime",
        dest="eightbitmime",
        action="store_true",
        help="send BODY=8BITMIME and an 8-bit body (RFC 6152)",
    )
    ext.add_argument(
        "--dsn-notify",
        metavar="NEVER|SUCCESS,FAILURE,DELAY",
        help="RCPT NOTIFY= (RFC 3461)",
    )
    ext.add_argument(
        "--dsn-ret",
        type=str.upper,
        choices=("FULL", "HDRS"),
        help="MAIL RET= (RFC 3461)",
    )
    ext.add_argument("--envid", help="MAIL ENVID= (RFC 3461)")

    out = p.add_argument_group("output")
    out.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="per connect and per read (default 30)",
    )
    out.add_argument(
        "--quiet", action="store_true", help="print only the outcome of a failure"
    )
    out.add_argument(
        "--explain", action="store_true", help="explain every reply, not only failures"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Carry out ``postroom send``; see the module docstring for statuses."""
    # Everything that can fail locally, before any byte goes out.
    host, port = parse_server(args.server, implicit_tls=args.tls)
    sender = check_address(args.sender, args.smtputf8, "--from", empty_ok=True)
    recipients = [
        check_address(a, args.smtputf8, "--to")
        for value in args.to
        for a in value.split(",")
        if a.strip()
    ]
    if not recipients:
        raise SendError("--to: no recipient given")
    if args.chunk_size < 1:
        raise SendError("--chunk-size must be at least 1")
    message = build_message(args, sender, recipients)
    context = tls_context(args) if args.tls or args.starttls else None
    options = smtpchat.Options(
        ehlo=args.helo or args.ehlo,
        helo=args.helo is not None,
        starttls=context if args.starttls else None,
        auth_user=args.auth_user,
        auth_password=read_password(args),
        auth_mech=args.auth_mech,
        pipelining=args.pipelining,
        bdat=args.bdat,
        chunk_size=args.chunk_size,
        eightbitmime=args.eightbitmime,
        smtputf8=args.smtputf8,
        notify=check_notify(args.dsn_notify),
        ret=args.dsn_ret,
        envid=args.envid,
    )

    printer = Printer(args.quiet, args.explain)
    chat = smtpchat.Chat.connect(
        host, port, args.timeout, printer, tls=context if args.tls else None
    )
    dialogue = smtpchat.Dialogue(chat, printer, options, host)
    try:
        dialogue.run(sender, recipients, message)
    except smtpchat.Rejected as refusal:
        if refusal.reply is None or refusal.reply.code != 421:
            dialogue.quit()  # RFC 5321 §3.8: after 421 the server is gone
        printer.rejected(refusal)  # last, so it ends the output
        return EXIT_REJECTED
    else:
        dialogue.quit()
        return EXIT_ACCEPTED
    finally:
        chat.close()


class Printer:
    """Shows the dialogue on stdout; implements ``smtpchat.Transcript``."""

    def __init__(self, quiet: bool, explain_all: bool) -> None:
        self.quiet = quiet
        self.explain_all = explain_all
        encoding = getattr(sys.stdout, "encoding", None) or "ascii"
        try:
            "↳".encode(encoding)
            self.arrow = "↳"
        except (UnicodeEncodeError, LookupError):
            self.arrow = "->"

    def client(self, line: str) -> None:
        self._out(f"C: {line}")

    def server(self, line: str) -> None:
        self._out(f"S: {line}")

    def note(self, line: str) -> None:
        self._out(f"* {line}")

    def reply(self, reply: Reply) -> None:
        if self.explain_all or not reply.ok:
            self._out(f"   {self.arrow} {self.explanation(reply)}")

    def tls(self, info: smtpchat.TlsInfo) -> None:
        self.note(f"TLS: {info.version}, {info.cipher} ({info.bits} bits)")
        trust = "verified" if info.verified else "NOT verified (--insecure)"
        self.note(f"TLS peer: {info.peer_subject}; issuer {info.peer_issuer}; {trust}")

    def rejected(self, refusal: smtpchat.Rejected) -> None:
        if refusal.reply is None:
            print(f"postroom: {refusal.step}: {refusal.reason}", file=sys.stderr)
            return
        after = f" ({refusal.reason})" if refusal.reason else ""
        print(
            f"postroom: server rejected {refusal.step}: "
            f"{refusal.reply.summary()}{after}",
            file=sys.stderr,
        )
        if self.quiet:
            print(f"   {self.arrow} {self.explanation(refusal.reply)}", file=sys.stderr)

    @staticmethod
    def explanation(reply: Reply) -> str:
        return explain.explain(reply.code, reply.enhanced, reply.text)

    def _out(self, line: str) -> None:
        if not self.quiet:
            print(line, flush=True)


def parse_server(text: str, implicit_tls: bool) -> tuple[str, int]:
    """Split ``HOST[:PORT]`` (IPv6 in brackets) into host and port."""
    default = 465 if implicit_tls else 25
    match = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", text)
    if match:
        host, port = match.group(1), match.group(2)
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, None  # a bare IPv6 address or a plain name
    if not host:
        raise SendError(f"--server {text!r}: no host")
    number = int(port) if port and port.isascii() and port.isdigit() else default
    digits = port is not None and port.isascii() and port.isdigit()
    if port is not None and (not digits or not 0 < number < 65536):
        raise SendError(f"--server {text!r}: bad port")
    return host, number


def check_address(
    text: str, smtputf8: bool, option: str, empty_ok: bool = False
) -> str:
    """The address as it goes between ``<>``, or SendError."""
    address = text.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    if not address and not empty_ok:
        raise SendError(f"{option}: empty address")
    if any(c in address for c in "<>\r\n\0 \t"):
        raise SendError(f"{option} {text!r}: not an address")
    if not address.isascii() and not smtputf8:
        # XXX: IDN domains are not converted to A-labels because a
        # troubleshooting tool should send what it was given; the user
        # can pass the xn-- form or use --smtputf8.
        raise SendError(f"{option} {text!r}: non-ASCII address needs --smtputf8")
    return address


def check_notify(text: str | None) -> str | None:
    if text is None:
        return None
    words = [w.strip().upper() for w in text.split(",") if w.strip()]
    allowed = {"SUCCESS", "FAILURE", "DELAY"}
    # RFC 3461 §4.1: NEVER stands alone; the others combine.
    if words == ["NEVER"] or (words and set(words) <= allowed):
        return ",".join(words)
    raise SendError(
        f"--dsn-notify {text!r}: use NEVER or a comma list of SUCCESS, FAILURE, DELAY"
    )


def read_password(args: argparse.Namespace) -> str:
    if args.auth_user is None:
        return ""
    if args.auth_password is not None:
        return str(args.auth_password)
    if args.auth_password_file is not None:
        text = read_file(args.auth_password_file, "--auth-password-file")
        lines = text.decode("utf-8", "replace").splitlines()
        return lines[0] if lines else ""
    return getpass.getpass(f"Password for {args.auth_user}: ")


def tls_context(args: argparse.Namespace) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=args.cafile)
    except (OSError, ssl.SSLError) as e:
        raise SendError(
            f"--cafile {args.cafile}: {getattr(e, 'strerror', None) or e}"
        ) from e
    if args.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def read_file(name: str, option: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(name).read_bytes()
    except OSError as e:
        raise SendError(f"{option} {name}: {e.strerror or e}") from e


def build_message(
    args: argparse.Namespace, sender: str, recipients: list[str]
) -> bytes:
    """The message octets with CRLF line ends, not yet dot-stuffed."""
    headers = [parse_header(h) for h in args.header]
    if args.body_file is not None:
        body = read_file(args.body_file, "--body-file")
    else:
        body = (args.body if args.body is not None else DEFAULT_BODY).encode("utf-8")

    if args.raw:
        if args.body is None and args.body_file is None:
            raise SendError("--raw needs the message in --body or --body-file")
        if args.subject is not None or args.attach:
            raise SendError(
                "--raw sends the message as given; drop --subject and --attach"
            )
        prefix = "".join(f"{name}: {value}\r\n" for name, value in headers)
        return normalize_newlines(prefix.encode("utf-8") + body)

    policy = email.policy.SMTPUTF8 if args.smtputf8 else email.policy.SMTP
    message = EmailMessage(policy=policy)
    if sender:
        message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Subject"] = (
        args.subject if args.subject is not None else "Test message from postroom send"
    )
    message["Date"] = email.utils.formatdate(localtime=True)
    # make_msgid() without a domain calls getfqdn(), a DNS lookup.
    domain = sender.rpartition("@")[2] or "postroom.invalid"
    message["Message-ID"] = email.utils.make_msgid(domain=domain)
    for name, value in headers:
        if name.lower() in ("from", "to", "subject", "date", "message-id"):
            del message[name]
        message[name] = value

    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SendError(
            f"--body-file {args.body_file}: not UTF-8 text; "
            "use --attach, or --raw for a prepared message"
        ) from e
    eight_bit = args.eightbitmime or args.smtputf8
    message.set_content(text, cte="8bit" if eight_bit and not text.isascii() else None)
    for name in args.attach:
        attach(message, name)
    return normalize_newlines(message.as_bytes())


def attach(message: EmailMessage, name: str) -> None:
    data = read_file(name, "--attach")
    ctype, encoding = mimetypes.guess_type(name)
    if ctype is None or encoding is not None:
        ctype = "application/octet-stream"  # e.g. .tar.gz: send as is
    maintype, subtype = ctype.split("/", 1)
    message.add_attachment(
        data, maintype=maintype, subtype=subtype, filename=Path(name).name
    )


def parse_header(text: str) -> tuple[str, str]:
    name, colon, value = text.partition(":")
    name = name.strip()
    # RFC 5322 §3.6.8: printable ASCII except colon; no line breaks
    # anywhere, or the header would smuggle more headers in.
    if (
        not colon
        or not name
        or "\r" in text
        or "\n" in text
        or not all(33 <= ord(c) <= 126 for c in name)
    ):
        raise SendError(f"--header {text!r}: expected 'Name: value'")
    return name, value.strip()


def normalize_newlines(data: bytes) -> bytes:
    """CRLF for every line end, including a final one (RFC 5321 §2.3.8).

    Bare CR and bare LF are both turned into CRLF: sent as they are,
    they are what SMTP smuggling attacks are made of.
    """
    data = re.sub(rb"\r\n|\r|\n", b"\r\n", data)
    return data if data.endswith(b"\r\n") else data + b"\r\n"
