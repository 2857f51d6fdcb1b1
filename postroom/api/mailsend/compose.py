"""From a checked Mail Send request to one MIME message per
personalization, with the standard library's ``email`` package.

Structure, the one mail clients expect (and the ``email`` package's
``add_alternative``/``add_related``/``add_attachment`` produce):

    multipart/mixed                 only with regular attachments
      multipart/alternative         only with more than one content
        text/plain
        multipart/related           only with inline attachments
          text/html
          image/png (Content-ID)    each inline attachment
      application/pdf               each regular attachment

Encoding: the policy allows 7-bit output only, so non-ASCII text goes
out quoted-printable or base64 and headers in RFC 2047 words, and the
message needs no 8BITMIME from any relay on its way. Only an address
with a non-ASCII local part forces UTF-8 headers (RFC 6532); the
message is then SMTPUTF8. Lines end in CRLF, as the spool stores them.

Message-ID and Date are not set here: ``received.missing_fields``
adds them at injection, as for mail submitted over SMTP, so a caller's
own Message-ID (a custom header) is kept.

XXX: a 20 MB attachment takes about a second to build (decoded, then
re-encoded and written line by line by the ``email`` generator); the
endpoint runs this in a thread, and SendGrid's 30 MB cap bounds it.
Reflowing the caller's base64 directly would save most of it.

Substitutions (SendGrid's legacy templating) replace each key, longest
first and in one pass, in the subject and the contents; ``sections``
are applied the same way after them, so a substitution may name a
section. Nothing is substituted into a header the caller set.
"""

from __future__ import annotations

import email.policy
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from typing import Any

from postroom.api.mailsend.model import EmailAddress, MailSend, Personalization
from postroom.campaigns.rendering import Rendered

_POLICY = email.policy.SMTP.clone(cte_type="7bit")
_POLICY_UTF8 = email.policy.SMTPUTF8.clone(cte_type="7bit")


@dataclass
class Composed:
    """One personalization's message and what the queue needs to know."""

    index: int
    sender: str
    recipients: list[tuple[str, str]]  # (field path, address)
    content: bytes
    smtputf8: bool
    send_at: int | None
    custom_args: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def compose(
    request: MailSend,
    index: int,
    p: Personalization,
    rendered: Rendered | None = None,
) -> Composed:
    """The message for personalization *index* of *request*; with
    *rendered* (``template_id``, see ``templating.py``) its subject,
    HTML and text come from the template, already substituted.

    Raises ValueError (with a message for the caller) when the
    ``email`` package cannot represent something the model allowed,
    such as a display name it cannot fold.
    """
    sender = p.from_ or request.from_
    everyone = [sender, *p.to, *(p.cc or []), *(p.bcc or [])]
    utf8 = not all(a.email.isascii() for a in everyone)
    msg = EmailMessage(policy=_POLICY_UTF8 if utf8 else _POLICY)
    replace = _substituter(p.substitutions or {}, request.sections or {})
    subject = replace(p.subject or request.subject or "")
    contents = [(c.type, replace(c.value)) for c in request.content or []]
    if rendered is not None:
        subject = rendered.subject or subject
        contents = [
            (kind, value)
            for kind, value in (("text/plain", rendered.text),
                                ("text/html", rendered.html))
            if value.strip()
        ]

    # The header: ours first, then the caller's (personalization wins).
    msg["From"] = _address(sender)
    msg["To"] = [_address(a) for a in p.to]
    if p.cc:
        msg["Cc"] = [_address(a) for a in p.cc]
    if request.reply_to is not None:
        msg["Reply-To"] = _address(request.reply_to)
    elif request.reply_to_list:
        msg["Reply-To"] = [_address(a) for a in request.reply_to_list]
    msg["Subject"] = subject
    headers = {**(request.headers or {}), **(p.headers or {})}
    for name, value in headers.items():
        msg[name] = value

    # The body: alternatives, then inline parts, then attachments.
    for i, (kind, value) in enumerate(contents):
        subtype = kind.split("/", 1)[1]
        if i == 0:
            msg.set_content(value, subtype=subtype, charset="utf-8")
        else:
            msg.add_alternative(value, subtype=subtype, charset="utf-8")
    # Inline parts belong with the HTML that shows them; without HTML
    # they are plain attachments marked inline.
    has_html = any(kind == "text/html" for kind, _ in contents)
    html = msg.get_body(("html",)) if has_html else None
    for a in request.attachments or []:
        maintype, subtype = (a.type or "application/octet-stream").split("/", 1)
        if a.disposition == "inline" and html is not None:
            html.add_related(
                a.data(),
                maintype=maintype,
                subtype=subtype,
                disposition="inline",
                filename=a.filename,
                cid=f"<{a.content_id}>",
            )
    for a in request.attachments or []:
        if a.disposition == "inline" and html is not None:
            continue
        maintype, subtype = (a.type or "application/octet-stream").split("/", 1)
        msg.add_attachment(
            a.data(),
            maintype=maintype,
            subtype=subtype,
            disposition=a.disposition,
            filename=a.filename,
            cid=f"<{a.content_id}>" if a.content_id else None,
        )
    if "MIME-Version" not in msg:
        msg["MIME-Version"] = "1.0"
    for sub in msg.walk():
        # Parts made by add_related/add_attachment carry their own
        # MIME-Version; RFC 2045 §4 wants it at the top only.
        if sub is not msg:
            del sub["MIME-Version"]

    return Composed(
        index=index,
        sender=sender.email,
        recipients=[
            (f"personalizations.{index}.{kind}.{j}.email", a.email)
            for kind, group in (("to", p.to), ("cc", p.cc), ("bcc", p.bcc))
            for j, a in enumerate(group or [])
        ],
        content=msg.as_bytes(),
        smtputf8=utf8,
        send_at=p.send_at if p.send_at is not None else request.send_at,
        custom_args={**(request.custom_args or {}), **(p.custom_args or {})},
    )


def _address(a: EmailAddress) -> Address:
    local, _, domain = a.email.rpartition("@")
    if local.startswith('"') and local.endswith('"'):
        # The header registry quotes a local part itself when needed.
        local = re.sub(r"\\(.)", r"\1", local[1:-1])
    return Address(display_name=a.name or "", username=local, domain=domain)


def _substituter(
    substitutions: dict[str, str], sections: dict[str, str]
) -> Callable[[str], str]:
    passes = [
        (re.compile("|".join(map(re.escape, sorted(m, key=len, reverse=True)))), m)
        for m in (substitutions, sections)
        if m
    ]

    def replace(text: str) -> str:
        for pattern, mapping in passes:
            text = pattern.sub(_lookup(mapping), text)
        return text

    return replace


def _lookup(mapping: dict[str, str]) -> Callable[[re.Match[str]], str]:
    def value(match: re.Match[str]) -> str:
        return mapping[match.group()]

    return value
