"""Delivery status notifications: the bounce, the delay warning and the
success report (RFC 3464), and who gets one (RFC 3461).

Theory of operation
-------------------
When delivery decides a recipient's fate, the engine asks
``should_notify`` whether the sender wants to hear about it, and
``dsn_recipient_address`` where to send the notice. ``build_dsn`` then
writes one notice covering any number of recipients of one message;
the engine stores it as a new message from the null sender ``<>``.

The caller must never send a notice about a message whose envelope
sender is ``<>`` (RFC 5321 §4.5.5, RFC 3461 §6.2): that message is
itself a notice, and answering it can loop forever between two mail
systems. ``dsn_recipient_address`` returns None for it and
``build_dsn`` refuses it.

A notice is a ``multipart/report; report-type=delivery-status``
(RFC 6522) of three parts:

1. ``text/plain``: what happened, per recipient, in plain words, with
   the remote server's reply and an explanation from
   ``postroom.delivery.classify``.
2. ``message/delivery-status``: the same, as fields programs read (the
   per-message block, then one block per recipient).
3. The original: all of it (``message/rfc822``) for a failure, unless
   the sender asked for headers only (``RET=HDRS``); only its header
   (``text/rfc822-headers``) for delay and success notices, which need
   not carry the message back (RFC 3461 §4.3). Like Postfix, a failure
   returns the full message when the sender gave no RET at all; but a
   message larger than ``FULL_RETURN_LIMIT`` comes back as its header
   only, and so does BINARYMIME content, which cannot travel inside a
   multipart.

Internationalised mail (RFC 6533): when the original was sent with
SMTPUTF8, the notice uses the ``message/global``,
``message/global-headers`` and ``message/global-delivery-status``
types, which may hold UTF-8 as it is, and the notice's own header is
written in UTF-8 too; the caller must then send it with SMTPUTF8. An
8-bit original without SMTPUTF8 goes back with
``Content-Transfer-Encoding: 8bit``; whenever the returned bytes are
not ASCII the notice must be sent with ``BODY=8BITMIME``. The original
is copied byte for byte (line ends made CRLF), never parsed and
written again, so what comes back is what was sent.

Everything is built with the standard library's ``email`` package and
returned as bytes with CRLF line ends. No I/O, no clock.
"""

from __future__ import annotations

import datetime as dt
import email.policy
import io
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from email.generator import BytesGenerator
from email.headerregistry import Address
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser
from email.utils import format_datetime, make_msgid
from typing import TYPE_CHECKING, Final

from postroom.delivery import classify
from postroom.protocol.smtp.content import normalize_newlines
from postroom.protocol.smtp.replies import Reply
from postroom.queue.envelope import Envelope, Recipient

FAILURE = "failure"
DELAY = "delay"
SUCCESS = "success"
KINDS: Final = (FAILURE, DELAY, SUCCESS)

# RFC 3464 §2.3.3 action values.
FAILED = "failed"
DELAYED = "delayed"
DELIVERED = "delivered"
RELAYED = "relayed"
EXPANDED = "expanded"
ACTIONS: Final = (FAILED, DELAYED, DELIVERED, RELAYED, EXPANDED)

# Beyond this size a failure returns the original's header only, as
# Postfix's bounce_size_limit does: a bounce that carries a 30 MB
# attachment back is more likely to fail itself than to help.
FULL_RETURN_LIMIT: Final = 2 * 1024 * 1024

SUBJECTS: Final = {
    FAILURE: "Undelivered Mail Returned to Sender",
    DELAY: "Delayed Mail (still being retried)",
    SUCCESS: "Successful Mail Delivery Report",
}

if TYPE_CHECKING:
    _Policy = email.policy.EmailPolicy[EmailMessage]

# Header fields are folded only past RFC 5322's hard limit: DSN readers
# in the wild parse one field per line more reliably than folded ones
# (the stdlib reads a folded Diagnostic-Code back with a stray space),
# and our own fields are short anyway.
_NO_FOLDING: Final = 998

_STATUS: Final = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


@dataclass
class DsnRecipient:
    """One recipient's line in a notice.

    ``address`` is the envelope recipient (RFC 3464 Final-Recipient);
    ``orcpt`` the decoded ORCPT as ``"rfc822;addr"`` when the client
    gave one. ``status`` is the enhanced status code; ``reply`` the
    remote (or made-up) reply, written as the Diagnostic-Code;
    ``remote_mta`` the host that gave it. Times are epoch seconds;
    ``will_retry_until`` belongs to ``delayed`` recipients only.
    """

    address: str
    orcpt: str | None
    action: str
    status: str
    reply: Reply | None
    remote_mta: str | None
    last_attempt: float | None
    will_retry_until: float | None


def dsn_recipient_address(envelope: Envelope) -> str | None:
    """Where notices about *envelope* go: its sender, or None for the
    null sender ``<>``, which must never get one."""
    return envelope.sender or None


def should_notify(recipient: Recipient, kind: str) -> bool:
    """Whether *recipient*'s NOTIFY asks for a notice of *kind*.

    RFC 3461 §4.1: NOTIFY=NEVER (an empty tuple) asks for none, a list
    for exactly those; without NOTIFY we send failures and delays, not
    successes. This does not look at the envelope sender: see
    ``dsn_recipient_address``.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown notice kind {kind!r}")
    if recipient.notify is None:
        return kind in (FAILURE, DELAY)
    return kind.upper() in recipient.notify


def build_dsn(
    *,
    envelope: Envelope,
    content: bytes,
    recipients: Sequence[DsnRecipient],
    reporting_mta: str,
    kind: str,
    now: float,
    queue_id_for_headers: str | None = None,
    full_return_limit: int = FULL_RETURN_LIMIT,
) -> bytes:
    """The notice of *kind* about *recipients* of the message *envelope*
    and *content*, as bytes with CRLF line ends.

    *reporting_mta* is our host name (Reporting-MTA, the From: domain,
    the Message-ID's right side); *now* the notice's Date.
    *queue_id_for_headers*, when given, goes into the Message-ID and an
    ``X-Postroom-Queue-ID`` field so that the notice can be traced back.

    Raises ValueError for an unknown kind or action, no recipients, or
    a null envelope sender.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown notice kind {kind!r}")
    if not recipients:
        raise ValueError("a notice needs at least one recipient")
    for r in recipients:
        if r.action not in ACTIONS:
            raise ValueError(f"unknown action {r.action!r} for <{r.address}>")
    to = dsn_recipient_address(envelope)
    if to is None:
        raise ValueError("never send a notice to the null sender <>")

    utf8 = envelope.smtputf8 or not _all_ascii(envelope, recipients)
    policy = email.policy.SMTP.clone(utf8=utf8)
    header, _ = _split_header(normalize_newlines(content))

    # The notice's own header and the text for people.
    report = EmailMessage(policy=policy)
    report["From"] = Address("Mail Delivery System", "MAILER-DAEMON", reporting_mta)
    report["To"] = to
    report["Subject"] = SUBJECTS[kind]
    report["Date"] = _date(now)
    report["Message-ID"] = make_msgid(queue_id_for_headers, reporting_mta)
    # RFC 3834 §5: an automatic reply; stops vacation responders.
    report["Auto-Submitted"] = "auto-replied"
    text = _human_text(envelope, header, recipients, reporting_mta, kind)
    report.set_content(text, cte=_text_encoding(text))

    # Make it a multipart/report holding the text, then add the rest.
    report.make_mixed()
    report.set_type("multipart/report")
    report.set_param("report-type", "delivery-status")
    report.attach(
        _status_part(envelope, recipients, reporting_mta, queue_id_for_headers, utf8)
    )
    report.attach(_returned_part(envelope, content, kind, full_return_limit, policy))
    return _flatten(report, policy)


# -- part 1: for people ------------------------------------------------

_INTROS: Final = {
    FAILURE: (
        "Your message could not be delivered to the recipients below. "
        "Delivery has stopped for them; the reasons follow, and your "
        "message is attached."
    ),
    DELAY: (
        "Your message has not reached the recipients below yet. We keep "
        "trying and will write again only if it fails for good; there is "
        "nothing you need to do now."
    ),
    SUCCESS: "Your message was delivered to the recipients below, as you asked.",
}

_HAPPENED: Final = {
    FAILED: "delivery failed",
    DELAYED: "not delivered yet, still trying",
    DELIVERED: "delivered",
    RELAYED: "passed on to a mail system that sends no further reports",
    EXPANDED: "delivered to a list or alias, which passed it on to its members",
}


def _human_text(
    envelope: Envelope,
    header: bytes,
    recipients: Sequence[DsnRecipient],
    reporting_mta: str,
    kind: str,
) -> str:
    paragraphs = [f"This is the mail system at {reporting_mta}.", _INTROS[kind]]
    about = []
    subject = _original_subject(header)
    if subject:
        about.append(f"Subject of your message: {subject}")
    if envelope.received_at:
        about.append(f"Received here: {_date(envelope.received_at)}")
    if about:
        paragraphs.append("\n".join(_wrap(line) for line in about))

    for r in recipients:
        lines = [f"<{r.address}>: {_HAPPENED.get(r.action, r.action)}"]
        if r.reply is not None:
            server = f"{r.remote_mta} said" if r.remote_mta else "Reason"
            lines.append(f"{server}: {_one_line(str(r.reply))}")
            if r.action in (FAILED, DELAYED):
                lines.append(classify.classify(r.reply).explanation)
        if r.action == DELAYED and r.will_retry_until:
            lines.append(f"We will keep trying until {_date(r.will_retry_until)}.")
        paragraphs.append(
            "\n".join([lines[0], *(_wrap(line, "    ") for line in lines[1:])])
        )
    return "\n\n".join(_wrap(p) if "\n" not in p else p for p in paragraphs) + "\n"


def _wrap(text: str, indent: str = "") -> str:
    # Long words (a URL in a reply) stay whole rather than being cut.
    return textwrap.fill(
        text,
        width=72,
        initial_indent=indent,
        subsequent_indent=indent,
        break_long_words=False,
        break_on_hyphens=False,
    )


def _text_encoding(text: str) -> str:
    # Plain 7bit when it can be; otherwise quoted-printable, which keeps
    # the notice 7-bit clean whenever the original was.
    if text.isascii() and all(len(line) <= 998 for line in text.splitlines()):
        return "7bit"
    return "quoted-printable"


def _original_subject(header: bytes) -> str:
    parsed = BytesHeaderParser(policy=email.policy.default).parsebytes(header)
    try:
        return _one_line(str(parsed.get("Subject", "")))
    except (ValueError, LookupError):
        # An undecodable encoded-word; the subject is only a courtesy.
        return ""


# -- part 2: for programs ----------------------------------------------


def _status_part(
    envelope: Envelope,
    recipients: Sequence[DsnRecipient],
    reporting_mta: str,
    queue_id: str | None,
    utf8: bool,
) -> EmailMessage:
    policy = email.policy.SMTP.clone(utf8=utf8, max_line_length=_NO_FOLDING)

    # RFC 3464 §2.2: the per-message fields.
    head = EmailMessage(policy=policy)
    if envelope.envid:
        head["Original-Envelope-Id"] = _field(envelope.envid)
    head["Reporting-MTA"] = f"dns; {reporting_mta}"
    if queue_id:
        head["X-Postroom-Queue-ID"] = queue_id
    if envelope.received_at:
        head["Arrival-Date"] = _date(envelope.received_at)
    blocks: list[Message | str] = [head]
    blocks += [_recipient_block(r, policy) for r in recipients]

    part = EmailMessage(policy=policy)
    if not utf8:
        part["Content-Type"] = "message/delivery-status"
        part.set_payload(blocks)
        return part
    # RFC 6533 §6: the same fields, in UTF-8. The email package
    # generates only the ASCII type from blocks, so we join them here.
    part["Content-Type"] = "message/global-delivery-status"
    part["Content-Transfer-Encoding"] = "8bit"
    text = "".join(str(block) for block in blocks)
    part.set_payload(text.encode("utf-8").decode("ascii", "surrogateescape"))
    return part


def _recipient_block(r: DsnRecipient, policy: _Policy) -> EmailMessage:
    # RFC 3464 §2.3: the per-recipient fields, in its order.
    block = EmailMessage(policy=policy)
    if r.orcpt:
        block["Original-Recipient"] = _field(r.orcpt)
    # RFC 6533 §3: a non-ASCII address has the "utf-8" address type.
    address_type = "rfc822" if r.address.isascii() else "utf-8"
    block["Final-Recipient"] = f"{address_type}; {_field(r.address)}"
    block["Action"] = r.action
    block["Status"] = _status(r)
    if r.remote_mta:
        block["Remote-MTA"] = f"dns; {_field(r.remote_mta)}"
    if r.reply is not None:
        block["Diagnostic-Code"] = f"smtp; {_one_line(str(r.reply))}"
    if r.last_attempt:
        block["Last-Attempt-Date"] = _date(r.last_attempt)
    if r.action == DELAYED and r.will_retry_until:
        block["Will-Retry-Until"] = _date(r.will_retry_until)
    return block


def _status(r: DsnRecipient) -> str:
    if _STATUS.fullmatch(r.status):
        return r.status
    # RFC 3464 §2.3.4 requires a status; derive its class from the action.
    klass = {FAILED: 5, DELAYED: 4}.get(r.action, 2)
    return f"{klass}.0.0"


# -- part 3: the original ----------------------------------------------


def _returned_part(
    envelope: Envelope,
    content: bytes,
    kind: str,
    full_return_limit: int,
    policy: _Policy,
) -> EmailMessage:
    content = normalize_newlines(content)
    header, _ = _split_header(content)
    full = (
        kind == FAILURE
        and envelope.ret != "HDRS"
        and envelope.body != "BINARYMIME"
        and len(content) <= full_return_limit
    )
    returned = content if full else header
    if envelope.smtputf8:
        ctype = "message/global" if full else "message/global-headers"
    else:
        ctype = "message/rfc822" if full else "text/rfc822-headers"
    what = {FAILURE: "Undelivered", DELAY: "Delayed", SUCCESS: "Delivered"}[kind]

    part = EmailMessage(policy=policy)
    part["Content-Type"] = ctype
    part["Content-Description"] = f"{what} Message" + ("" if full else " Headers")
    if not returned.isascii():
        part["Content-Transfer-Encoding"] = "8bit"
    # Carried as text with the non-ASCII bytes escaped, which the
    # generator below writes back unchanged.
    part.set_payload(returned.decode("ascii", "surrogateescape"))
    return part


def _split_header(content: bytes) -> tuple[bytes, bytes]:
    """The header section (with the CRLF ending its last field) and
    the body; a message without an empty line is all header."""
    if content.startswith(b"\r\n"):
        return b"", content[2:]
    end = content.find(b"\r\n\r\n")
    if end < 0:
        return content, b""
    return content[: end + 2], content[end + 4 :]


# -- helpers -------------------------------------------------------------


class _Generator(BytesGenerator):
    # The stdlib writes a message/* payload given as text with a strict
    # ASCII encode, so a returned 8-bit original would crash it. Our
    # payloads hold raw bytes escaped as surrogates (the email package's
    # own convention); write those bytes back as they were.
    def _encode(self, s: str) -> bytes:
        return s.encode("ascii", "surrogateescape")


def _flatten(message: EmailMessage, policy: _Policy) -> bytes:
    out = io.BytesIO()
    policy = policy.clone(max_line_length=_NO_FOLDING)
    _Generator(out, policy=policy).flatten(message)
    return out.getvalue()


def _date(when: float) -> str:
    return format_datetime(dt.datetime.fromtimestamp(when, dt.UTC))


def _one_line(text: str) -> str:
    return " ".join(_CONTROL.sub(" ", text).split())


def _field(value: str) -> str:
    # Decoded ORCPT and ENVID values may hold any octet, CR and LF
    # included (xtext can encode them); a line break in a field would
    # let a client write fields of its own into our report.
    return _CONTROL.sub("?", value)


def _all_ascii(envelope: Envelope, recipients: Sequence[DsnRecipient]) -> bool:
    values = [envelope.sender, envelope.envid or ""]
    for r in recipients:
        values += [r.address, r.orcpt or "", r.remote_mta or ""]
        if r.reply is not None:
            values.append(r.reply.text)
    return all(v.isascii() for v in values)
