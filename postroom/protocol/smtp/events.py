"""Events the SMTP server core hands to its driver.

Events marked *answer required* pause the core: ``next_event`` returns
``PAUSED`` until the driver calls ``ServerConnection.respond(reply)``.
A positive reply (2xx/3xx) makes the command take effect (the sender is
set, the recipient added, the user authenticated, TLS started); a
negative one leaves the state as it was. Everything else the core
answers by itself (syntax, sequence, RSET, NOOP, HELP, DATA's 354, BDAT
chunks before LAST).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from postroom.protocol.smtp.replies import Reply
from postroom.protocol.smtp.syntax import Address


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_DATA = _Sentinel("NEED_DATA")
"""No complete command buffered: call ``receive_data``."""

PAUSED = _Sentinel("PAUSED")
"""An answer-required event is outstanding: call ``respond``."""


@dataclass(slots=True)
class MailParams:
    """MAIL FROM parameters after validation."""

    size: int | None = None  # RFC 1870 SIZE=
    body: str = ""  # RFC 6152/3030 BODY= (upper case)
    smtputf8: bool = False  # RFC 6531
    ret: str | None = None  # RFC 3461 RET=FULL|HDRS
    envid: str | None = None  # RFC 3461 ENVID=, xtext-decoded
    auth: str | None = None  # RFC 4954 AUTH=, xtext-decoded
    requiretls: bool = False  # RFC 8689


@dataclass(slots=True)
class RcptParams:
    """RCPT TO parameters after validation (RFC 3461 §4)."""

    notify: tuple[str, ...] | None = None  # () means NEVER
    orcpt: str | None = None  # "rfc822;addr", decoded


@dataclass(slots=True)
class Helo:
    """HELO or EHLO (answer required). ``reply`` is the core's proposed
    answer, with the extension list for EHLO."""

    name: str
    extended: bool
    reply: Reply


@dataclass(slots=True)
class MailFrom:
    """MAIL FROM (answer required)."""

    sender: Address
    params: MailParams


@dataclass(slots=True)
class RcptTo:
    """RCPT TO (answer required). The recipient limit is already checked."""

    recipient: Address
    params: RcptParams


@dataclass(slots=True)
class Message:
    """End of DATA or BDAT LAST with valid content (answer required).

    ``content`` is the message as the client meant it: dot-stuffing
    undone, CRLF line ends. The transaction ends with whatever answer is
    given.
    """

    sender: Address
    mail_params: MailParams
    recipients: list[tuple[Address, RcptParams]]
    content: bytes
    chunked: bool


@dataclass(slots=True)
class Auth:
    """Credentials from AUTH PLAIN or LOGIN (answer required: 235 or 535)."""

    mechanism: str
    authzid: str
    username: str
    password: str = field(repr=False)


@dataclass(slots=True)
class StartTls:
    """STARTTLS (answer required). After a 220, the driver must wrap the
    transport in TLS and call ``tls_started()``; bytes that followed the
    command in cleartext are already discarded."""


@dataclass(slots=True)
class Vrfy:
    """VRFY argument (answer required)."""

    argument: str


@dataclass(slots=True)
class Expn:
    """EXPN argument (answer required)."""

    argument: str


@dataclass(slots=True)
class Etrn:
    """ETRN node argument, RFC 1985 (answer required)."""

    argument: str


@dataclass(slots=True)
class Closed:
    """The conversation is over: QUIT was answered, the driver closed it,
    or the peer hung up (``by_peer``). The driver sends what is left in
    the output buffer, then closes the transport."""

    by_peer: bool
    lost_message: bool = False


Event = (
    Helo | MailFrom | RcptTo | Message | Auth | StartTls | Vrfy | Expn | Etrn | Closed
)
