"""POP3 status lines: a typed value, its wire form, and the ones we send.

A POP3 answer is one status line, ``+OK text`` or ``-ERR text``, and for
some commands a multi-line body after a ``+OK`` (built in ``server``).
A negative answer may carry a response code in brackets right after
``-ERR`` (RFC 2449 §8): we send ``[AUTH]`` for refused credentials and
plain-text logins refused before TLS, ``[IN-USE]`` when another session
holds the maildrop (RFC 2449 §8.1.2), ``[SYS/TEMP]`` and ``[SYS/PERM]``
for our own trouble (RFC 3206 §4-5). Clients that advertise nothing
still cope: the code is just the first word of the text to them.

Texts are client-safe: no paths, no configuration, no internals.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Response:
    """One status line. ``code`` is a RFC 2449 response code or ""."""

    ok: bool
    text: str
    code: str = ""
    wire: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        status = "+OK" if self.ok else "-ERR"
        code = f" [{self.code}]" if self.code else ""
        text = f" {self.text}" if self.text else ""
        object.__setattr__(self, "wire", f"{status}{code}{text}\r\n".encode())

    def render(self) -> bytes:
        """The status line as sent, CRLF-terminated."""
        return self.wire


def ok(text: str = "") -> Response:
    return Response(True, text)


def err(text: str, code: str = "") -> Response:
    return Response(False, text, code)


# Response codes (RFC 2449 §8, RFC 3206).
AUTH = "AUTH"
IN_USE = "IN-USE"
SYS_TEMP = "SYS/TEMP"
SYS_PERM = "SYS/PERM"

# -- Sent by the core ---------------------------------------------------------

OK = ok()
CAPABILITIES = ok("Capability list follows")
SCAN_LISTING = ok("scan listing follows")
UNIQUE_IDS = ok("unique-id listing follows")
MECHANISMS = ok("SASL mechanisms follow")
USER_OK = ok("send PASS")
BEGIN_TLS = ok("Begin TLS negotiation now")
DELETED = ok("message deleted")
SIGNING_OFF = ok("Postroom POP3 server signing off")

UNKNOWN_COMMAND = err("unknown command")
SYNTAX = err("syntax error in arguments")
LINE_TOO_LONG = err("line too long")
NOT_UTF8 = err("line is not UTF-8 text")
TOO_MANY_ERRORS = err("too many bad commands; closing")
WRONG_STATE = err("command not valid in this state")
NO_SUCH_MESSAGE = err("no such message")
ALREADY_DELETED = err("message already deleted")
PASS_WITHOUT_USER = err("send USER first")
PLAINTEXT_DISABLED = err(
    "plain-text authentication needs TLS first: use STLS", AUTH
)
TLS_UNAVAILABLE = err("STLS not available")
TLS_ACTIVE = err("TLS is already active")
UNSUPPORTED_MECHANISM = err("unsupported SASL mechanism")
AUTH_CANCELLED = err("authentication cancelled")
AUTH_MALFORMED = err("malformed SASL response")
AUTHZID_REFUSED = err("cannot log in as another user", AUTH)
APOP_UNAVAILABLE = err("APOP not available")

# -- Sent for the driver (it chooses, the core renders) -----------------------

AUTH_FAILED = err("authentication failed", AUTH)
AUTH_TEMPORARY = err("cannot check credentials now; try again later", SYS_TEMP)
MAILDROP_LOCKED = err("maildrop is in use by another session", IN_USE)
MAILDROP_UNAVAILABLE = err("maildrop not available now; try again later", SYS_TEMP)
TOO_MANY_AUTH_FAILURES = err("too many authentication failures; closing", AUTH)
MESSAGE_GONE = err("message is no longer available")
READ_FAILED = err("cannot read message now", SYS_TEMP)
UPDATE_FAILED = err("some deleted messages were not removed", SYS_TEMP)
TOO_MANY_CONNECTIONS = err("too many connections; try again later", SYS_TEMP)
SHUTTING_DOWN = err("server shutting down", SYS_TEMP)


def maildrop(count: int, octets: int) -> Response:
    """The answer to a login and to RSET (RFC 1939 §5, §6)."""
    return ok(f"maildrop has {count} messages ({octets} octets)")
