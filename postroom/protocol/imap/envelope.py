"""ENVELOPE (RFC 3501 §7.4.2) from a message's header fields.

Values are passed through as they are in the message, unfolded: encoded
words (RFC 2047) stay encoded, as the RFC intends and every server does;
the client decodes them. An address becomes (name adl mailbox host); a
group is bracketed by (NIL NIL "name" NIL) and (NIL NIL NIL NIL)
(RFC 3501 §7.4.2, group syntax). Sender and Reply-To default to From
when absent or empty.

The address parser here is deliberately forgiving: it reads what real
mail carries (missing angle brackets, stray commas, comments, obsolete
routes) and never raises; what cannot be read yields nothing rather
than a wrong address.
"""

from __future__ import annotations

from dataclasses import dataclass

from postroom.protocol.imap import responses
from postroom.protocol.imap.mime import Part

NIL = responses.NIL
_SPECIALS = frozenset(b"<>@,:;.[]")


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # "atom", "quoted", "special", "literal" ([domain])
    text: bytes
    start: int
    end: int


Address = tuple[bytes | None, bytes | None, bytes | None, bytes | None]


def tokenize(value: bytes) -> list[Token]:
    out: list[Token] = []
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c in b" \t\r\n":
            i += 1
        elif c == 0x28:  # "(" comment, nested, with quoted pairs
            depth = 0
            while i < n:
                c = value[i]
                if c == 0x5C:
                    i += 1
                elif c == 0x28:
                    depth += 1
                elif c == 0x29:
                    depth -= 1
                    if depth == 0:
                        break
                i += 1
            i += 1
        elif c == 0x22:
            j, buf = i + 1, bytearray()
            while j < n and value[j] != 0x22:
                if value[j] == 0x5C and j + 1 < n:
                    j += 1
                buf.append(value[j])
                j += 1
            out.append(Token("quoted", bytes(buf), i, min(j + 1, n)))
            i = j + 1
        elif c == 0x5B:  # domain literal
            j = value.find(b"]", i)
            j = n - 1 if j < 0 else j
            out.append(Token("atom", value[i : j + 1], i, j + 1))
            i = j + 1
        elif c in _SPECIALS:
            out.append(Token("special", value[i : i + 1], i, i + 1))
            i += 1
        else:
            j = i
            while j < n and value[j] not in b' \t\r\n"(' and value[j] not in _SPECIALS:
                j += 1
            out.append(Token("atom", value[i:j], i, j))
            i = j
    return out


def _is(tok: Token, special: bytes) -> bool:
    return tok.kind == "special" and tok.text == special


def _phrase(value: bytes, tokens: list[Token]) -> bytes | None:
    out = bytearray()
    prev: Token | None = None
    for tok in tokens:
        if prev is not None and tok.start > prev.end and value[prev.end : tok.start]:
            out += b" "
        out += tok.text
        prev = tok
    return bytes(out) if out else None


def _addr_spec(tokens: list[Token]) -> tuple[bytes | None, bytes | None]:
    at = max((i for i, t in enumerate(tokens) if _is(t, b"@")), default=-1)
    if at < 0:
        local = b"".join(t.text for t in tokens)
        return (local or None), b""
    local = b"".join(t.text for t in tokens[:at])
    host = b"".join(t.text for t in tokens[at + 1 :])
    return local or None, host or b""


def parse_addresses(value: bytes) -> list[Address]:
    """Addresses and group markers of one address-list header value."""
    tokens = tokenize(value)
    out: list[Address] = []
    pending: list[Token] = []
    in_group = False
    i, n = 0, len(tokens)

    def flush() -> None:
        if pending and any(_is(t, b"@") for t in pending):
            out.append((None, None, *_addr_spec(pending)))
        elif pending:
            local, _ = _addr_spec(pending)
            out.append((None, None, local, b""))
        pending.clear()

    while i < n:
        tok = tokens[i]
        if _is(tok, b","):
            flush()
        elif _is(tok, b":") and not in_group:
            out.append((None, None, _phrase(value, pending) or b"", None))
            pending.clear()
            in_group = True
        elif _is(tok, b";") and in_group:
            flush()
            out.append((None, None, None, None))
            in_group = False
        elif _is(tok, b"<"):
            j = i + 1
            while j < n and not _is(tokens[j], b">"):
                j += 1
            inner = tokens[i + 1 : j]
            adl = None
            colon = [k for k, t in enumerate(inner) if _is(t, b":")]
            if colon:  # obsolete route "@a,@b:"
                adl = b"".join(t.text for t in inner[: colon[-1]]) or None
                inner = inner[colon[-1] + 1 :]
            if inner:
                local, host = _addr_spec(inner)
                out.append((_phrase(value, pending), adl, local, host))
            pending.clear()
            i = j
        else:
            pending.append(tok)
        i += 1
    flush()
    if in_group:
        out.append((None, None, None, None))
    return out


def render_addresses(value: bytes | None, utf8: bool) -> bytes:
    if value is None:
        return NIL
    addresses = parse_addresses(value)
    if not addresses:
        return NIL
    s = responses.nstring
    return (
        b"("
        + b"".join(
            b"(%s %s %s %s)"
            % (s(a, utf8=utf8), s(b, utf8=utf8), s(c, utf8=utf8), s(d, utf8=utf8))
            for a, b, c, d in addresses
        )
        + b")"
    )


def render_envelope(message: Part, *, utf8: bool = False) -> bytes:
    """The ENVELOPE of *message* (a top-level or encapsulated message)."""
    h = message.header
    s = responses.nstring
    from_ = _nonempty(h("from"))
    sender = _nonempty(h("sender")) or from_
    reply_to = _nonempty(h("reply-to")) or from_
    items = (
        s(h("date"), utf8=utf8),
        s(h("subject"), utf8=utf8),
        render_addresses(from_, utf8),
        render_addresses(sender, utf8),
        render_addresses(reply_to, utf8),
        render_addresses(_nonempty(h("to")), utf8),
        render_addresses(_nonempty(h("cc")), utf8),
        render_addresses(_nonempty(h("bcc")), utf8),
        s(h("in-reply-to"), utf8=utf8),
        s(h("message-id"), utf8=utf8),
    )
    return b"(" + b" ".join(items) + b")"


def _nonempty(value: bytes | None) -> bytes | None:
    return value if value else None
