"""The states of an IMAP session (RFC 3501 §3) and the input modes
within them; see ``connection.py`` for the transitions."""

from __future__ import annotations

import enum


class State(enum.Enum):
    NOT_AUTHENTICATED = enum.auto()
    AUTHENTICATED = enum.auto()
    SELECTED = enum.auto()
    LOGOUT = enum.auto()


class Mode(enum.Enum):
    """How the next input is read: as commands, as the client's lines
    of an AUTHENTICATE exchange, as IDLE's DONE, or (after STARTTLS, until
    the handshake) not at all."""

    COMMAND = enum.auto()
    AUTHENTICATE = enum.auto()
    IDLE = enum.auto()
    TLS_PENDING = enum.auto()
