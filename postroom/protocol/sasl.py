"""The server side of SASL PLAIN (RFC 4616) and LOGIN, sans I/O.

Shared by SMTP AUTH (RFC 4954), POP3 AUTH (RFC 5034) and IMAP
AUTHENTICATE (RFC 3501 §6.2.2): each protocol only wraps challenges in
its own syntax ("334 ..." or "+ ...") and turns the outcome into its
own reply. Lines exchanged are base64; "*" cancels (all three RFCs);
"=" is an empty initial response (RFC 4954 §4, RFC 5034 §4).

LOGIN is not standardized, but every mail client still offers it, so
refusing it would only push those clients to fail.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

MECHANISMS = ("PLAIN", "LOGIN")


@dataclass(frozen=True, slots=True)
class Challenge:
    """Send this (plain text; the protocol base64-encodes it) and wait."""

    text: str


@dataclass(frozen=True, slots=True)
class Credentials:
    """The client said who it is; check the password."""

    mechanism: str
    authzid: str
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Failure:
    """The exchange ended without credentials. ``reason`` is one of
    ``cancelled``, ``bad-base64``, ``malformed``."""

    reason: str


Outcome = Challenge | Credentials | Failure


class SaslServer:
    """One exchange for one mechanism (from ``MECHANISMS``)."""

    def __init__(self, mechanism: str) -> None:
        if mechanism not in MECHANISMS:
            raise ValueError(f"unsupported SASL mechanism {mechanism!r}")
        self.mechanism = mechanism
        self._username: str | None = None

    def start(self, initial: str | None) -> Outcome:
        """Begin, with the initial response if the client sent one."""
        if initial is None:
            return Challenge("" if self.mechanism == "PLAIN" else "Username:")
        return self.step(initial)

    def step(self, line: str) -> Outcome:
        """Take one client line."""
        if line == "*":
            return Failure("cancelled")
        try:
            decoded = b"" if line == "=" else base64.b64decode(line, validate=True)
            text = decoded.decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return Failure("bad-base64")

        if self.mechanism == "PLAIN":
            parts = text.split("\0")
            if len(parts) != 3 or not parts[1]:
                return Failure("malformed")
            return Credentials("PLAIN", parts[0], parts[1], parts[2])
        if self._username is None:
            self._username = text
            return Challenge("Password:")
        return Credentials("LOGIN", "", self._username, text)


def encode_challenge(challenge: Challenge) -> bytes:
    return base64.b64encode(challenge.text.encode("utf-8"))
