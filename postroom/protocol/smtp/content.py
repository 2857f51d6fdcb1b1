"""Checks on message content once DATA or BDAT has delivered all of it.

Runs on whole messages, not per line: bytes methods (``count``,
``find``, ``isascii``) scan in C and cost microseconds even for 100 KB,
where a Python loop over lines would dominate the session's CPU time.
"""

from __future__ import annotations

from postroom.protocol.smtp import replies
from postroom.protocol.smtp.events import MailParams
from postroom.protocol.smtp.replies import Reply

TEXT_LINE_LIMIT = 1000  # RFC 5321 §4.5.3.1.6, CRLF included


def unstuff(raw: bytes) -> bytes:
    """Undo dot-stuffing (RFC 5321 §4.5.2): drop the first "." of every
    line that starts with one.

    One ``replace`` pass, which hands back *raw* itself when no line
    starts with a dot (the common case) instead of a copy.
    """
    if raw.startswith(b"."):
        raw = raw[1:]
    return raw.replace(b"\r\n.", b"\r\n")


def normalize_newlines(raw: bytes) -> bytes:
    """Every CR, LF or CRLF becomes CRLF.

    Applied to DATA *before* dot-unstuffing when bare newlines are to be
    normalized, as Postfix does: a smuggled ``<LF>.<LF>`` then becomes a
    dot-stuffed line like any other and loses its dot, instead of being
    stored as a lone "." line that looks like an end of data.
    """
    crlf = raw.count(b"\r\n")
    if raw.count(b"\n") == crlf and raw.count(b"\r") == crlf:
        return raw
    return raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def check(
    content: bytes,
    params: MailParams,
    *,
    bare_newlines: str,
    undeclared_8bit: str,
) -> Reply | bytes | None:
    """Return a refusal, a normalized copy of *content*, or None if fine.

    BINARYMIME content (RFC 3030) is taken as it is: it is octets, not
    lines. Otherwise, in order: NUL bytes; bare CR or LF (refused, or
    rewritten to CRLF when *bare_newlines* is "normalize" — the end of
    data was already found strictly, so rewriting cannot end it early,
    and any "." line it creates is dot-stuffed again on relay); 8-bit
    octets without BODY=8BITMIME or SMTPUTF8 (RFC 6152); lines longer
    than 998 octets plus CRLF.
    """
    if params.body == "BINARYMIME":
        return None
    if b"\0" in content:
        return replies.NUL_IN_DATA
    # One split serves two checks: with n CRLFs there are n+1 pieces, so
    # any other CR or LF is bare; and the longest piece is the longest line.
    lines = content.split(b"\r\n")
    crlf = len(lines) - 1
    normalized = None
    # CRs and LFs together, in one pass: twice the CRLFs unless some
    # stand alone.
    if len(content) - len(content.translate(None, b"\r\n")) != 2 * crlf:
        if bare_newlines != "normalize":
            return replies.BARE_NEWLINE_DATA
        normalized = content = normalize_newlines(content)
        lines = content.split(b"\r\n")
    if (
        undeclared_8bit == "reject"
        and not params.smtputf8
        and params.body != "8BITMIME"
        and not content.isascii()
    ):
        return replies.UNDECLARED_8BIT
    if max(map(len, lines)) > TEXT_LINE_LIMIT - 2:
        return replies.TEXT_LINE_TOO_LONG
    return normalized
