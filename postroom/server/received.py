"""The header fields we prepend to an accepted message.

Every message gets a Received field. RFC 5321 §4.4 asks for the
client's identity, ours, the protocol, an id and the date; RFC 3848 and
RFC 6531 §4.3 name the protocols (ESMTPS for TLS, ESMTPA for AUTH,
UTF8SMTP for SMTPUTF8 ...). We add no reverse DNS name: looking one up
costs a DNS round trip on the hot path and tells the reader less than
the address does. ``for <rcpt>`` appears only with a single recipient,
so that one recipient's copy does not list the others (the privacy note
in RFC 5321 §7.6).

A submitted message also gets the Message-ID and Date fields it lacks
(``missing_fields``): RFC 5322 §3.6 requires Date and wants Message-ID,
and RFC 6409 §8.2 and §8.3 let a submission server add them. The caller
decides what counts as submitted: RFC 5321 §6.4 forbids such repairs
to a server acting as an intermediate relay, which adds Received and
nothing else.
"""

from __future__ import annotations

import email.utils
import functools
import re

import idna


def protocol_name(*, esmtp: bool, tls: bool, auth: bool, utf8: bool) -> str:
    if not esmtp:
        return "SMTP"
    name = "UTF8SMTP" if utf8 else "ESMTP"
    if tls:
        name += "S"
    if auth:
        name += "A"
    return name


def header(
    *,
    utf8: bool = False,
    helo: str,
    client_ip: str,
    hostname: str,
    protocol: str,
    queue_id: str,
    tls: str,
    now: float,
    recipient: str | None,
) -> bytes:
    """The header, folded, CRLF-terminated, ready to prepend."""
    literal = f"IPv6:{client_ip}" if ":" in client_ip else client_ip
    lines = [f"Received: from {_clean(helo, utf8)} ([{literal}])"]
    if tls:
        lines.append(f"\t(using {tls})")
    lines.append(f"\tby {hostname} (Postroom) with {protocol} id {queue_id}")
    if recipient:
        lines.append(f"\tfor <{recipient}>")
    lines[-1] += ";"
    lines.append("\t" + _date(int(now)))
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


# A Message-ID or Date field name at the start of a header line. The
# colon may follow white space (RFC 5322 §4.5.3, obsolete but seen).
# Continuation lines start with white space, so they never match.
_ORIGIN_FIELD = re.compile(rb"(?:^|\n)(message-id|date)[ \t]*:", re.IGNORECASE)


def missing_fields(
    content: bytes, *, queue_id: str, hostname: str, now: float
) -> bytes:
    """The Message-ID and Date fields *content* lacks, CRLF-terminated,
    ready to prepend; b"" when it has both.

    Only the header section counts: up to the first empty line, or all
    of *content* if there is none; a "Date:" line in the body does not.
    This runs for every submitted message, so it looks at bytes only
    (a regular expression over the header section), never parses the
    message. The Message-ID is ``<QUEUEID@hostname>``, unique as long
    as queue ids are unique per host name (see ``postroom.ids``).
    """
    found = {m.group(1).lower() for m in _ORIGIN_FIELD.finditer(_head(content))}
    if len(found) == 2:
        return b""
    added = b""
    if b"message-id" not in found:
        added += f"Message-ID: <{queue_id}@{_ascii(hostname)}>\r\n".encode("ascii")
    if b"date" not in found:
        added += f"Date: {_date(int(now))}\r\n".encode("ascii")
    return added


# RFC 5321 §6.3: loops are found by counting Received fields, with a
# threshold of "at least 100". Aliases that forward (#4) make loops
# between two hosts possible; without a limit a message circles forever.
MAX_HOPS = 100
_RECEIVED_FIELD = re.compile(rb"(?:^|\n)received[ \t]*:", re.IGNORECASE)


def too_many_hops(content: bytes) -> bool:
    """Whether the header section of *content* has more than MAX_HOPS
    Received fields. Costs one ``find`` and one ``count`` for a header
    of fewer lines than that: this runs for every message."""
    end = content.find(b"\r\n\r\n")
    end = len(content) if end < 0 else end + 2
    if content.count(b"\n", 0, end) <= MAX_HOPS:
        return False
    return len(_RECEIVED_FIELD.findall(_head(content))) > MAX_HOPS


def _head(content: bytes) -> bytes:
    """The header section of *content* (stored content uses CRLF)."""
    if content.startswith(b"\r\n"):
        return b""
    end = content.find(b"\r\n\r\n")
    return content if end < 0 else content[: end + 2]


@functools.lru_cache(maxsize=4)
def _ascii(hostname: str) -> str:
    # Keep the added fields ASCII, so that they never make a 7-bit
    # message 8-bit: an IDN host name goes in as its A-label.
    if hostname.isascii():
        return hostname
    try:
        return idna.encode(hostname, uts46=True).decode("ascii")
    except idna.IDNAError:
        return hostname.encode("ascii", "replace").decode("ascii")


@functools.lru_cache(maxsize=4)
def _date(second: int) -> str:
    # Formatting a date costs more than the rest of the header; at high
    # rates many messages share a second.
    return email.utils.formatdate(second, localtime=True)


def _clean(helo: str, utf8: bool) -> str:
    """The HELO name is the client's word: keep it from breaking the
    header, and from making a 7-bit message 8-bit (only an SMTPUTF8
    message may carry UTF-8 in its header, RFC 6532)."""
    if not utf8 and not helo.isascii():
        try:
            helo = idna.encode(helo, uts46=True).decode("ascii")
        except idna.IDNAError:
            helo = helo.encode("ascii", "replace").decode("ascii")
    text = "".join(c for c in helo if c.isprintable() and c not in "()\\")
    return text[:255] or "unknown"
