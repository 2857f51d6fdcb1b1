"""Validation of MAIL FROM and RCPT TO parameters.

One small function per keyword, looked up in a table, so that adding an
extension means adding a row. Each raises ``SyntaxProblem`` with the
reply to send; unknown keywords are 555 5.5.4 (RFC 5321 §4.1.1.11:
parameters of extensions we did not advertise).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from postroom.protocol.smtp import replies
from postroom.protocol.smtp.events import MailParams, RcptParams
from postroom.protocol.smtp.replies import Reply
from postroom.protocol.smtp.syntax import SyntaxProblem, decode_xtext

ENVID_LIMIT = 100  # RFC 3461 §4.4
ORCPT_LIMIT = 500  # RFC 3461 §4.2
_DSN_NOTIFY = frozenset({"SUCCESS", "FAILURE", "DELAY"})


@dataclass(frozen=True, slots=True)
class Context:
    """What the validators need to know about the session."""

    esmtp: bool
    max_message_size: int
    tls_active: bool


def _bad(what: str) -> SyntaxProblem:
    return SyntaxProblem(Reply.of(501, "5.5.4", f"Bad {what} value"))


def _flag(name: str, value: str | None) -> None:
    if value is not None:
        raise SyntaxProblem(Reply.of(501, "5.5.4", f"{name} takes no value"))


def _size(p: MailParams, value: str | None, ctx: Context) -> None:
    # RFC 1870 §6: refuse at MAIL when the declared size is too big.
    if value is None or not (value.isascii() and value.isdigit()) or len(value) > 20:
        raise _bad("SIZE")
    p.size = int(value)
    if p.size > ctx.max_message_size:
        raise SyntaxProblem(replies.MESSAGE_TOO_BIG)


def _body(p: MailParams, value: str | None, ctx: Context) -> None:
    body = (value or "").upper()
    if body not in ("7BIT", "8BITMIME", "BINARYMIME"):
        raise _bad("BODY")
    p.body = body


def _smtputf8(p: MailParams, value: str | None, ctx: Context) -> None:
    _flag("SMTPUTF8", value)
    p.smtputf8 = True


def _ret(p: MailParams, value: str | None, ctx: Context) -> None:
    ret = (value or "").upper()
    if ret not in ("FULL", "HDRS"):
        raise _bad("RET")
    p.ret = ret


def _envid(p: MailParams, value: str | None, ctx: Context) -> None:
    if not value or len(value) > ENVID_LIMIT:
        raise _bad("ENVID")
    p.envid = decode_xtext(value)


def _auth(p: MailParams, value: str | None, ctx: Context) -> None:
    # RFC 4954 §5: the identity that submitted the message originally.
    if not value:
        raise _bad("AUTH")
    p.auth = decode_xtext(value)


def _requiretls(p: MailParams, value: str | None, ctx: Context) -> None:
    # RFC 8689 §4.1: only meaningful, and only advertised, under TLS.
    if not ctx.tls_active:
        raise SyntaxProblem(replies.REQUIRETLS_NEEDS_TLS)
    _flag("REQUIRETLS", value)
    p.requiretls = True


_MAIL: dict[str, Callable[[MailParams, str | None, Context], None]] = {
    "SIZE": _size,
    "BODY": _body,
    "SMTPUTF8": _smtputf8,
    "RET": _ret,
    "ENVID": _envid,
    "AUTH": _auth,
    "REQUIRETLS": _requiretls,
}


def mail_params(raw: dict[str, str | None], ctx: Context) -> MailParams:
    """Validate MAIL FROM parameters (already split by ``parse_parameters``)."""
    params = MailParams()
    if raw and not ctx.esmtp:
        raise SyntaxProblem(replies.UNKNOWN_PARAMETER)
    for key, value in raw.items():
        check = _MAIL.get(key)
        if check is None:
            raise SyntaxProblem(replies.UNKNOWN_PARAMETER)
        check(params, value, ctx)
    return params


def rcpt_params(raw: dict[str, str | None], ctx: Context) -> RcptParams:
    """Validate RCPT TO parameters: NOTIFY and ORCPT (RFC 3461 §4)."""
    params = RcptParams()
    if raw and not ctx.esmtp:
        raise SyntaxProblem(replies.UNKNOWN_PARAMETER)
    for key, value in raw.items():
        if key == "NOTIFY":
            items = tuple((value or "").upper().split(","))
            if items == ("NEVER",):
                params.notify = ()
            elif set(items) <= _DSN_NOTIFY and len(set(items)) == len(items):
                params.notify = items
            else:
                raise _bad("NOTIFY")
        elif key == "ORCPT":
            text = value or ""
            addr_type, semi, xtext = text.partition(";")
            if not semi or not addr_type or not xtext or len(text) > ORCPT_LIMIT:
                raise _bad("ORCPT")
            params.orcpt = f"{addr_type.lower()};{decode_xtext(xtext)}"
        else:
            raise SyntaxProblem(replies.UNKNOWN_PARAMETER)
    return params
