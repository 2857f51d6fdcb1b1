"""Events the POP3 server core hands to its driver.

Events marked *answer required* pause the core: ``next_event`` returns
``PAUSED`` until the driver calls the answering method named on the
event. Everything else (CAPA, STAT, LIST, UIDL, DELE, RSET, NOOP, the
USER step, syntax and sequence errors) the core answers by itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_DATA = _Sentinel("NEED_DATA")
"""No complete command buffered: call ``receive_data``."""

PAUSED = _Sentinel("PAUSED")
"""An answer-required event is outstanding."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One message of a maildrop, as the driver lists it at login.

    ``key`` is the driver's handle for the message (the store's UID);
    ``size`` its exact size in octets as stored, CRLF line ends, which
    is what LIST and STAT report (RFC 1939 §5); ``unique_id`` its UIDL
    string: 1 to 70 characters 0x21-0x7E, never reused for another
    message of the maildrop (RFC 1939 §7).
    """

    key: int
    size: int
    unique_id: str


@dataclass(frozen=True, slots=True)
class Login:
    """USER/PASS or AUTH gave credentials (answer required:
    ``accept_login(entries)`` or ``refuse_login(response)``).

    ``mechanism`` is ``USER`` for USER/PASS, else the SASL mechanism.
    An authorization identity other than the user itself has already
    been refused by the core.
    """

    username: str
    password: str = field(repr=False)
    mechanism: str


@dataclass(frozen=True, slots=True)
class Apop:
    """APOP name digest (RFC 1939 §7; answer required as for Login).

    Only when ``Options.apop_timestamp`` is set. The driver checks
    ``digest`` with ``content.apop_matches(timestamp, secret, d)``, which
    needs the user's secret in a form equal to the plain text.
    """

    username: str
    digest: str


@dataclass(frozen=True, slots=True)
class StartTls:
    """STLS was accepted and ``+OK`` is queued: flush it, run the TLS
    handshake, then call ``tls_started()`` (answer required)."""


@dataclass(frozen=True, slots=True)
class Retrieve:
    """RETR (``lines`` None) or TOP (answer required:
    ``send_message(content)`` or ``refuse_retrieve(response)``).

    ``number`` is the message number the client used; the driver finds
    the message by ``entry.key``.
    """

    number: int
    entry: Entry
    lines: int | None


@dataclass(frozen=True, slots=True)
class Update:
    """QUIT in the TRANSACTION state: remove ``deleted`` now (RFC 1939
    §6, the UPDATE state; answer required: ``finish_update(ok)``)."""

    deleted: tuple[Entry, ...]


@dataclass(frozen=True, slots=True)
class Closed:
    """The conversation is over: flush ``data_to_send()`` and close.
    Deletions not confirmed by an Update are forgotten."""


Event = Login | Apop | StartTls | Retrieve | Update | Closed
