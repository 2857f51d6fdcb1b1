"""The two things the checks read or change in a message's header.

``from_domains``: the domains of the RFC 5322.From addresses, which
DMARC calls the author domain (RFC 7489 §3.1, §6.6.1).

``remove_claims``: RFC 8601 §5 requires a receiver to remove (or make
unusable) any Authentication-Results field that arrives carrying its
own authserv-id, before it adds its own: otherwise a forger writes
"mx.example.org; dkim=pass" and a filter downstream believes it. We
remove such fields outright; fields of other authserv-ids stay, they
are other hosts' claims and say so. Removal happens after DKIM
verification, which must see the message as it was signed.

Both look at the header section only (up to the first empty line), as
bytes; stored content always has CRLF line ends.
"""

from __future__ import annotations

import email.utils
import re

from postroom.delivery import routing

_FROM = re.compile(rb"^from[ \t]*:", re.IGNORECASE)
_AR = re.compile(rb"^authentication-results[ \t]*:", re.IGNORECASE)


def header_section(content: bytes) -> bytes:
    """The header section of *content*, up to and including the CRLF
    that ends its last field."""
    if content.startswith(b"\r\n"):
        return b""
    end = content.find(b"\r\n\r\n")
    return content if end < 0 else content[: end + 2]


def fields(head: bytes) -> list[bytes]:
    """The header fields of *head*, each with its continuation lines
    and its final CRLF."""
    # Lines are gathered per field and joined once: appending to the
    # field's bytes line by line copies it each time, and a stranger's
    # field folded over a million short lines then costs hours (on the
    # event loop, where the checks read the From field).
    parts: list[list[bytes]] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and parts:
            parts[-1].append(line)
        else:
            parts.append([line])
    return [b"".join(field) for field in parts]


def from_domains(content: bytes) -> list[str]:
    """The distinct domains of the From addresses, as lower-case
    A-labels, in order of appearance; [] when there is no From or no
    address with a domain."""
    found: list[str] = []
    for field in fields(header_section(content)):
        if not _FROM.match(field):
            continue
        value = field.split(b":", 1)[1].decode("utf-8", "replace")
        value = value.replace("\r\n", "")
        for _name, address in email.utils.getaddresses([value]):
            domain = address.rpartition("@")[2].strip()
            if "@" in address and domain:
                name = routing.destination(domain)
                if name not in found:
                    found.append(name)
    return found


def remove_claims(content: bytes, authserv_id: str) -> tuple[bytes, int]:
    """*content* without the Authentication-Results fields that claim
    *authserv_id* (compared case-insensitively, RFC 8601 §2.5), and how
    many were removed."""
    head = header_section(content)
    if b"authentication-results" not in head.lower():
        return content, 0
    ours = authserv_id.lower()
    kept: list[bytes] = []
    removed = 0
    for field in fields(head):
        if _AR.match(field) and _authserv_id(field) == ours:
            removed += 1
            continue
        kept.append(field)
    if not removed:
        return content, 0
    return b"".join(kept) + content[len(head) :], removed


def _authserv_id(field: bytes) -> str:
    """The authserv-id of an Authentication-Results field, lower-cased:
    the first value after the colon, past any comments and folding
    (RFC 8601 §2.2: a token or a quoted-string)."""
    text = field.split(b":", 1)[1].decode("utf-8", "replace")
    text = _strip_comments(text).strip()
    if text.startswith('"'):
        end = text.find('"', 1)
        return text[1 : end if end > 0 else None].lower()
    return re.split(r"[\s;]", text, maxsplit=1)[0].lower()


def _strip_comments(text: str) -> str:
    # RFC 5322 §3.2.2 comments nest; a backslash quotes one character.
    out = []
    depth = 0
    escaped = False
    for char in text:
        if escaped:
            escaped = False
            if depth == 0:
                out.append(char)
            continue
        if char == "\\":
            escaped = True
            if depth == 0:
                out.append(char)
        elif char == "(":
            depth += 1
        elif char == ")" and depth:
            depth -= 1
        elif depth == 0:
            out.append(char)
    return "".join(out)
