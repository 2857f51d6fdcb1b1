"""Grammar of SMTP command arguments: paths, addresses and parameters.

Each rule cites the RFC that defines it. Parsing works on ``str``
(command lines are decoded as UTF-8 first) and raises ``SyntaxProblem``
carrying the reply to send, so the caller never maps errors itself.

Where we are more liberal than the RFC, on purpose, because real clients
do it and it opens no hole:

* ``MAIL FROM: <a@b>`` with a space after the colon (RFC 5321 has none).
* A path without angle brackets, ``MAIL FROM:a@b`` (RFC 821 clients).

Where we are strict, on purpose:

* Source routes (``<@relay:user@dom>``) are parsed and dropped, as RFC
  5321 §4.1.1.3 and appendix C allow; only the final mailbox counts, so
  a route can never make us relay.
* Only the text after the *last unquoted* ``@`` is the domain; ``%`` and
  ``!`` are plain local-part characters here and never route anything.
* Non-ASCII in a path is refused with 553 5.6.7 unless the transaction
  declared SMTPUTF8 (RFC 6531 §3.5).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import idna

from postroom.protocol.smtp.replies import Reply


class SyntaxProblem(Exception):
    """Bad argument syntax; ``reply`` is what to answer."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


@dataclass(frozen=True, slots=True)
class Address:
    """A mailbox from a path (RFC 5321 §4.1.2).

    ``local`` is the local part as the client wrote it (quotes kept, so
    it can be sent on unchanged); ``domain`` is lowercased and in the
    client's form (U-labels stay U-labels); ``ascii_domain`` is the same
    domain in A-labels for routing and comparisons. The null path ``<>``
    has all three empty. ``postmaster`` without a domain (RFC 5321
    §4.5.1) has an empty domain.
    """

    local: str
    domain: str
    ascii_domain: str

    @property
    def is_null(self) -> bool:
        return not self.local and not self.domain

    def __str__(self) -> str:
        if self.is_null:
            return ""
        return f"{self.local}@{self.domain}" if self.domain else self.local

    @property
    def unquoted_local(self) -> str:
        """The local part with quoting removed (``"a b"`` -> ``a b``)."""
        if self.local.startswith('"'):
            return re.sub(r"\\(.)", r"\1", self.local[1:-1])
        return self.local


NULL_ADDRESS = Address("", "", "")

# RFC 5321 §4.5.3.1: size limits, in octets.
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256

# RFC 5322 atext, widened by RFC 6531 §3.3 to any non-ASCII character.
_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
_ATEXT_UTF8 = _ATEXT + r"\u0080-\U0010ffff"
_DOT_STRING = re.compile(rf"[{_ATEXT_UTF8}]+(?:\.[{_ATEXT_UTF8}]+)*")
# RFC 5321 qtextSMTP / quoted-pairSMTP, widened by RFC 6531.
_QUOTED = re.compile(
    r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]'
    r'|\\[\x20-\x7e])*"'
)
_LABEL = re.compile(
    r"[A-Za-z0-9\u0080-\U0010ffff]"
    r"(?:[A-Za-z0-9\-\u0080-\U0010ffff]*"
    r"[A-Za-z0-9\u0080-\U0010ffff])?"
)
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-]*")
# RFC 5321 esmtp-value, widened by RFC 6531 §3.3.
_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e\u0080-\U0010ffff]+")


_ASCII_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+"
_ASCII_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?"
_PLAIN_PATH = re.compile(
    rf"<({_ASCII_ATOM}(?:\.{_ASCII_ATOM})*)@({_ASCII_LABEL}(?:\.{_ASCII_LABEL}){{0,126}})>"
    r"(?= |$)"
)


def parse_path(text: str, *, null_ok: bool, bad: Reply) -> tuple[Address, str]:
    """Parse a path at the start of *text*; return it and the rest.

    *null_ok* allows ``<>`` (reverse-path). *bad* is the reply for a
    malformed path (501 with the right enhanced code for MAIL or RCPT).
    """
    text = text.lstrip(" ")
    # Nearly every path is a plain ASCII dot-atom at a host name; one
    # regular expression settles those, the general parser the rest.
    m = _PLAIN_PATH.match(text)
    if m is not None and len(m.group(1)) <= MAX_LOCAL_PART:
        domain = m.group(2).lower()
        return Address(m.group(1), domain, domain), text[m.end() :].strip(" ")
    if text.startswith("<"):
        end = _closing_bracket(text)
        if end < 0:
            raise SyntaxProblem(bad)
        inner, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(" "):
            raise SyntaxProblem(bad)
    else:
        inner, _, rest = text.partition(" ")
    rest = rest.strip(" ")

    if inner == "":
        if null_ok:
            return NULL_ADDRESS, rest
        raise SyntaxProblem(bad)
    if len(inner) + 2 > MAX_PATH:
        raise SyntaxProblem(Reply.of(501, bad.enhanced, "Path too long"))

    # Source route: "@a,@b:mailbox" (RFC 5321 §4.1.2 A-d-l). Dropped.
    if inner.startswith("@"):
        route, colon, inner = inner.partition(":")
        if not colon or not all(
            hop.startswith("@") and _is_domain(hop[1:]) for hop in route.split(",")
        ):
            raise SyntaxProblem(bad)

    return _mailbox(inner, bad), rest


def _closing_bracket(text: str) -> int:
    """Index of the ``>`` closing the path, skipping quoted strings."""
    quoted = False
    i = 1
    while i < len(text):
        c = text[i]
        if quoted and c == "\\":
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == ">" and not quoted:
            return i
        i += 1
    return -1


def _mailbox(text: str, bad: Reply) -> Address:
    # Local part: a quoted string or a dot-string, then "@" and a domain.
    m = _QUOTED.match(text) if text.startswith('"') else _DOT_STRING.match(text)
    if m is None:
        raise SyntaxProblem(bad)
    local, rest = m.group(), text[m.end() :]
    if rest == "" and local.lower() == "postmaster":
        return Address(local, "", "")
    if not rest.startswith("@"):
        raise SyntaxProblem(bad)
    domain = rest[1:]
    if len(local.encode()) > MAX_LOCAL_PART:
        raise SyntaxProblem(Reply.of(501, bad.enhanced, "Local part too long"))
    if domain.startswith("["):
        literal = _address_literal(domain, bad)
        return Address(local, literal, literal)
    if not _is_domain(domain):
        raise SyntaxProblem(bad)
    domain = domain.lower().rstrip(".")
    return Address(local, domain, to_ascii_domain(domain, bad))


def _is_domain(text: str) -> bool:
    if not text or len(text) > MAX_DOMAIN:
        return False
    labels = (text[:-1] if text.endswith(".") else text).split(".")
    return all(_LABEL.fullmatch(label) for label in labels)


def to_ascii_domain(domain: str, bad: Reply) -> str:
    """A-label form of *domain* (IDNA 2008, RFC 5890); 501 if invalid."""
    if domain.isascii():
        return domain
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError:
        raise SyntaxProblem(
            Reply.of(501, bad.enhanced, "Invalid internationalized domain")
        ) from None


def _address_literal(text: str, bad: Reply) -> str:
    # RFC 5321 §4.1.3: [IPv4], [IPv6:addr]; general literals we refuse.
    if not text.endswith("]"):
        raise SyntaxProblem(bad)
    body = text[1:-1]
    try:
        if body[:5].lower() == "ipv6:":
            return f"[IPv6:{ipaddress.IPv6Address(body[5:]).compressed}]"
        return f"[{ipaddress.IPv4Address(body)}]"
    except ValueError:
        raise SyntaxProblem(bad) from None


def has_non_ascii(address: Address) -> bool:
    return not (address.local.isascii() and address.domain.isascii())


def parse_parameters(text: str) -> dict[str, str | None]:
    """Split ``KEY=VALUE KEY ...`` (RFC 5321 §4.1.2 Mail-parameters).

    Keys are upper-cased; a key without ``=`` maps to None. Duplicates
    and malformed keywords or values are a 501.
    """
    params: dict[str, str | None] = {}
    for item in text.split(" "):
        if not item:
            continue
        key, eq, value = item.partition("=")
        if not _KEYWORD.fullmatch(key) or (eq and not _VALUE.fullmatch(value)):
            raise SyntaxProblem(Reply.of(501, "5.5.4", f"Bad parameter: {item[:40]}"))
        key = key.upper()
        if key in params:
            raise SyntaxProblem(Reply.of(501, "5.5.4", f"Duplicate parameter {key}"))
        params[key] = value if eq else None
    return params


def decode_xtext(text: str) -> str:
    """Decode RFC 3461 §4 xtext (``+HH`` escapes); 501 when malformed.

    Escapes stand for octets; the octets are read as UTF-8 so that a
    value encoded by ``encode_xtext`` comes back unchanged.
    """
    out = bytearray()
    i = 0
    while i < len(text):
        c = text[i]
        if c == "+":
            pair = text[i + 1 : i + 3]
            if len(pair) != 2 or not all(h in "0123456789ABCDEF" for h in pair):
                raise SyntaxProblem(Reply.of(501, "5.5.4", "Bad xtext encoding"))
            out.append(int(pair, 16))
            i += 3
            continue
        if c == "=" or not ("\x21" <= c <= "\x7e" or ord(c) > 0x7F):
            raise SyntaxProblem(Reply.of(501, "5.5.4", "Bad xtext encoding"))
        out += c.encode("utf-8")
        i += 1
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        raise SyntaxProblem(Reply.of(501, "5.5.4", "Bad xtext encoding")) from None


def encode_xtext(text: str) -> str:
    """Encode *text* as RFC 3461 xtext (for passing DSN data on)."""
    return "".join(
        f"+{b:02X}" if b in (0x2B, 0x3D) or not 0x21 <= b <= 0x7E else chr(b)
        for b in text.encode("utf-8")
    )
