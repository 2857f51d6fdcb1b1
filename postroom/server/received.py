"""The Received header we prepend to every accepted message.

RFC 5321 §4.4 asks for the client's identity, ours, the protocol, an id
and the date; RFC 3848 and RFC 6531 §4.3 name the protocols (ESMTPS for
TLS, ESMTPA for AUTH, UTF8SMTP for SMTPUTF8 ...). We add no reverse DNS
name: looking one up costs a DNS round trip on the hot path and tells
the reader less than the address does. ``for <rcpt>`` appears only with
a single recipient, so that one recipient's copy does not list the
others (the privacy note in RFC 5321 §7.6).
"""

from __future__ import annotations

import email.utils
import functools

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
