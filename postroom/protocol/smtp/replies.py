"""SMTP replies: a typed value, its wire form, and the ones we send.

Every reply carries an enhanced status code (RFC 2034, RFC 3463) because
we advertise ENHANCEDSTATUSCODES; the greeting is the one exception the
RFC makes (RFC 2034 §3: no enhanced code before EHLO has told us the
client understands them — but clients ignore it either way, so we follow
Postfix and leave it off only the 220 greeting).

Named constants below are the replies the core sends itself; tests
compare against them rather than scattering literals (aiosmtpd's
``statuscodes.py`` habit). Text is always client-safe: no configuration,
no internal identifiers except the queue id we choose to disclose.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply, possibly multi-line.

    ``enhanced`` is "" only for the greeting; ``lines`` holds the text of
    each line without code or status (at least one line, may be empty).
    """

    code: int
    enhanced: str
    lines: tuple[str, ...]
    # The wire form, made once: most replies are module constants sent
    # thousands of times a second.
    wire: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "wire", self._render())

    @classmethod
    def of(cls, code: int, enhanced: str, *lines: str) -> Reply:
        return cls(code, enhanced, lines or ("",))

    @property
    def text(self) -> str:
        return " ".join(self.lines)

    @property
    def positive(self) -> bool:
        """2xx and 3xx replies move the conversation forward."""
        return self.code < 400

    def render(self) -> bytes:
        """The reply as it goes on the wire, CRLF-terminated."""
        return self.wire

    def _render(self) -> bytes:
        prefix = f"{self.code} {self.enhanced} " if self.enhanced else f"{self.code} "
        cont = f"{self.code}-{self.enhanced} " if self.enhanced else f"{self.code}-"
        last = len(self.lines) - 1
        out = [
            (prefix if i == last else cont) + line for i, line in enumerate(self.lines)
        ]
        return ("\r\n".join(out) + "\r\n").encode("utf-8")

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}".replace("  ", " ")


def ok(text: str = "Ok") -> Reply:
    return Reply.of(250, "2.0.0", text)


# Session and sequence.
CLOSING = Reply.of(221, "2.0.0", "Bye")
NOOP_OK = Reply.of(250, "2.0.0", "Ok")
RESET_OK = Reply.of(250, "2.0.0", "Ok")
SENDER_OK = Reply.of(250, "2.1.0", "Sender ok")
RECIPIENT_OK = Reply.of(250, "2.1.5", "Recipient ok")
START_DATA = Reply.of(354, "", "End data with <CR><LF>.<CR><LF>")
READY_TLS = Reply.of(220, "2.0.0", "Ready to start TLS")
AUTH_OK = Reply.of(235, "2.7.0", "Authentication successful")
CANNOT_VRFY = Reply.of(
    252, "2.5.0", "Cannot verify the user, but will accept the message"
)
VRFY_DISABLED = Reply.of(502, "5.5.1", "VRFY is disabled")
EXPN_DISABLED = Reply.of(502, "5.5.1", "EXPN is disabled")
SHUTTING_DOWN = Reply.of(421, "4.3.2", "Service shutting down, try again later")
TIMEOUT = Reply.of(421, "4.4.2", "Timeout waiting for input, closing")
TOO_MANY_CONNECTIONS = Reply.of(421, "4.7.0", "Too many connections, try again later")
TOO_MANY_AUTH_FAILURES = Reply.of(
    421, "4.7.0", "Too many failed authentication attempts, closing"
)

# Syntax (5.5.x).
UNKNOWN_COMMAND = Reply.of(500, "5.5.1", "Command unrecognized")
LINE_TOO_LONG = Reply.of(500, "5.5.2", "Line too long")
BARE_LF_COMMAND = Reply.of(
    500, "5.5.2", "Command line must end with <CR><LF>, not a bare <LF>"
)
NUL_IN_COMMAND = Reply.of(500, "5.5.2", "NUL byte in command line")
NEED_HELO = Reply.of(503, "5.5.1", "Send HELO or EHLO first")
NESTED_MAIL = Reply.of(503, "5.5.1", "Sender already given")
NEED_MAIL = Reply.of(503, "5.5.1", "Need MAIL before RCPT")
NEED_RCPT = Reply.of(503, "5.5.1", "Need RCPT before DATA")
NO_VALID_RECIPIENTS = Reply.of(554, "5.5.1", "No valid recipients")
ALREADY_AUTHENTICATED = Reply.of(503, "5.5.1", "Already authenticated")
AUTH_IN_TRANSACTION = Reply.of(
    503, "5.5.1", "AUTH not allowed during a mail transaction"
)
TLS_ACTIVE = Reply.of(503, "5.5.1", "TLS already active")
DATA_AFTER_BDAT = Reply.of(503, "5.5.1", "DATA cannot follow BDAT in one transaction")
DATA_WITH_BINARYMIME = Reply.of(503, "5.5.1", "BODY=BINARYMIME requires BDAT, not DATA")
BDAT_AFTER_FAILURE = Reply.of(503, "5.5.1", "Earlier BDAT failed; send RSET")
HELO_SYNTAX = Reply.of(501, "5.5.4", "Syntax: HELO/EHLO hostname")
MAIL_SYNTAX = Reply.of(501, "5.5.4", "Syntax: MAIL FROM:<address>")
RCPT_SYNTAX = Reply.of(501, "5.5.4", "Syntax: RCPT TO:<address>")
BDAT_SYNTAX = Reply.of(501, "5.5.4", "Syntax: BDAT size [LAST]")
NO_ARGUMENTS = Reply.of(501, "5.5.4", "This command takes no arguments")
VRFY_SYNTAX = Reply.of(501, "5.5.4", "Syntax: VRFY address")
EXPN_SYNTAX = Reply.of(501, "5.5.4", "Syntax: EXPN list")
ETRN_SYNTAX = Reply.of(501, "5.5.4", "Syntax: ETRN domain")
AUTH_SYNTAX = Reply.of(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
AUTH_BAD_BASE64 = Reply.of(501, "5.5.2", "Cannot decode the base64 response")
AUTH_CANCELLED = Reply.of(501, "5.7.0", "Authentication cancelled")
UNKNOWN_PARAMETER = Reply.of(555, "5.5.4", "Unsupported parameter")

# Not offered on this connection.
AUTH_NOT_AVAILABLE = Reply.of(503, "5.5.1", "AUTH not available; try STARTTLS first")
AUTH_UNKNOWN_MECH = Reply.of(504, "5.5.4", "Unrecognized authentication mechanism")
AUTH_FAILED = Reply.of(535, "5.7.8", "Authentication credentials invalid")
AUTH_TEMPORARY = Reply.of(
    454, "4.7.0", "Temporary authentication failure, try again later"
)
TLS_NOT_AVAILABLE = Reply.of(502, "5.5.1", "STARTTLS not available")
NOT_IMPLEMENTED = Reply.of(502, "5.5.1", "Command not implemented")

# Transaction limits and content.
TOO_MANY_RECIPIENTS = Reply.of(452, "4.5.3", "Too many recipients")
MESSAGE_TOO_BIG = Reply.of(
    552, "5.3.4", "Message size exceeds fixed maximum message size"
)
NON_ASCII_ADDRESS = Reply.of(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
BARE_NEWLINE_DATA = Reply.of(
    550, "5.6.0", "Message contains a bare <CR> or <LF>; lines must end with <CR><LF>"
)
NUL_IN_DATA = Reply.of(550, "5.6.0", "Message contains a NUL byte")
TEXT_LINE_TOO_LONG = Reply.of(
    550, "5.6.0", "Message has a line longer than 998 characters (RFC 5322)"
)
UNDECLARED_8BIT = Reply.of(
    550, "5.6.1", "8-bit data needs BODY=8BITMIME or SMTPUTF8 (RFC 6152)"
)
REQUIRETLS_NEEDS_TLS = Reply.of(530, "5.7.10", "REQUIRETLS needs a TLS session")
TRANSACTION_FAILED = Reply.of(
    451, "4.3.0", "Local error in processing, try again later"
)
