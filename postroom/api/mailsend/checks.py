"""Rules of a Mail Send request that relate fields to one another or to
the node's limits; the shape of each field is ``model.py``'s job.

Each problem names the field it is about, as SendGrid's answers do
(``personalizations.0.cc.1.email``), and all problems are reported at
once, so a caller fixes a request in one round.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from postroom.api.mailsend.model import Content, MailSend, Personalization
from postroom.config import HttpConfig

# SendGrid's own limits, which clients are written against.
MAX_CUSTOM_ARGS_BYTES = 10_000
MAX_SUBSTITUTIONS_BYTES = 10_000
# A send_at beyond this is a mistake (milliseconds for seconds, say),
# not a plan: ten years.
MAX_SCHEDULE_AHEAD = 10 * 365 * 86400


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a request: what, and where (None: the
    request as a whole)."""

    message: str
    field: str | None


def check(request: MailSend, limits: HttpConfig, now: float) -> list[Problem]:
    """Every problem of *request* under *limits*; [] if it may be sent."""
    problems: list[Problem] = []
    problems += _template(request)
    problems += _content(request.content or [], request.template_id)
    problems += _subject(request)
    problems += _counts(request, limits)
    for i, p in enumerate(request.personalizations):
        problems += _personalization(i, p, now)
    if request.reply_to is not None and request.reply_to_list is not None:
        problems.append(
            Problem("reply_to and reply_to_list cannot both be used", "reply_to_list")
        )
    for i, attachment in enumerate(request.attachments or []):
        if attachment.disposition == "inline" and not attachment.content_id:
            problems.append(
                Problem(
                    "content_id is required for inline attachments",
                    f"attachments.{i}.content_id",
                )
            )
    categories = request.categories or []
    for i, category in enumerate(categories):
        if category in categories[:i]:
            problems.append(Problem("categories must be unique", f"categories.{i}"))
    if _size(request.custom_args) > MAX_CUSTOM_ARGS_BYTES:
        problems.append(
            Problem("custom_args may not exceed 10,000 bytes", "custom_args")
        )
    if request.send_at is not None:
        problems += _send_at(request.send_at, "send_at", now)
    return problems


def templates_available() -> bool:
    """Whether stored templates exist in this build (another module,
    ``postroom.campaigns.templates``, provides them)."""
    return importlib.util.find_spec("postroom.campaigns.templates") is not None


def _template(request: MailSend) -> list[Problem]:
    if request.template_id is None:
        return []
    if not templates_available():
        # A build without stored templates: accepting the id would send
        # mail without the content the caller meant.
        return [Problem("templates are not available yet", "template_id")]
    if request.content:
        # The template makes the parts; content beside it would be
        # dropped without a word.
        return [
            Problem("content cannot be combined with a template_id", "content")
        ]
    return []


def _content(contents: list[Content], template_id: str | None) -> list[Problem]:
    if not contents:
        if template_id is not None:
            return []
        return [
            Problem(
                "Unless a valid template_id is provided, the content parameter "
                "is required. There must be at least one defined content block.",
                "content",
            )
        ]
    problems = []
    types = [c.type for c in contents]
    for i, kind in enumerate(types):
        if kind in types[:i]:
            problems.append(
                Problem(f"content type {kind} appears twice", f"content.{i}.type")
            )
    # SendGrid's ordering rule: the last alternative is the one readers
    # prefer (RFC 2046 §5.1.4), so plain text must come first.
    if "text/plain" in types and types.index("text/plain") != 0:
        problems.append(
            Problem(
                "The text/plain content type must be first, followed by "
                "text/html and any other content.",
                f"content.{types.index('text/plain')}.type",
            )
        )
    elif "text/html" in types and types.index("text/html") > 1:
        problems.append(
            Problem(
                "text/html must follow text/plain, before any other content.",
                f"content.{types.index('text/html')}.type",
            )
        )
    return problems


def _subject(request: MailSend) -> list[Problem]:
    if request.subject or request.template_id is not None:
        return []
    if all(p.subject for p in request.personalizations):
        return []
    return [
        Problem(
            "The subject is required. You can get around this requirement if "
            "every personalization has a subject defined.",
            "subject",
        )
    ]


def _counts(request: MailSend, limits: HttpConfig) -> list[Problem]:
    problems = []
    count = len(request.personalizations)
    if count > limits.max_personalizations:
        problems.append(
            Problem(
                f"at most {limits.max_personalizations} personalizations "
                f"may be sent in one request, got {count}",
                "personalizations",
            )
        )
    recipients = sum(len(_addresses(p)) for p in request.personalizations)
    if recipients > limits.max_recipients:
        problems.append(
            Problem(
                f"at most {limits.max_recipients} recipients (to, cc and bcc "
                f"over all personalizations) per request, got {recipients}",
                "personalizations",
            )
        )
    return problems


def _personalization(i: int, p: Personalization, now: float) -> list[Problem]:
    problems = []
    seen: set[str] = set()
    for kind, j, address in _addresses(p):
        key = address.lower()
        if key in seen:
            problems.append(
                Problem(
                    "Each email address in the personalization block should be "
                    "unique between to, cc, and bcc.",
                    f"personalizations.{i}.{kind}.{j}.email",
                )
            )
        seen.add(key)
    if _size(p.custom_args) > MAX_CUSTOM_ARGS_BYTES:
        problems.append(
            Problem(
                "custom_args may not exceed 10,000 bytes",
                f"personalizations.{i}.custom_args",
            )
        )
    if _size(p.substitutions) > MAX_SUBSTITUTIONS_BYTES:
        problems.append(
            Problem(
                "substitutions may not exceed 10,000 bytes",
                f"personalizations.{i}.substitutions",
            )
        )
    if p.send_at is not None:
        problems += _send_at(p.send_at, f"personalizations.{i}.send_at", now)
    return problems


def _send_at(send_at: int, field: str, now: float) -> list[Problem]:
    if send_at > now + MAX_SCHEDULE_AHEAD:
        return [
            Problem(
                "send_at is a UNIX timestamp in seconds at most ten years ahead",
                field,
            )
        ]
    return []


def _addresses(p: Personalization) -> list[tuple[str, int, str]]:
    """(kind, index, address) of every recipient of *p*."""
    return [
        (kind, j, a.email)
        for kind, group in (("to", p.to), ("cc", p.cc), ("bcc", p.bcc))
        for j, a in enumerate(group or [])
    ]


def recipients_of(p: Personalization) -> list[tuple[str, str]]:
    """(field path within the personalization, address) of each
    recipient of *p*, in to, cc, bcc order."""
    return [(f"{kind}.{j}.email", a) for kind, j, a in _addresses(p)]


def _size(mapping: dict[str, str] | None) -> int:
    if not mapping:
        return 0
    return sum(len(k.encode()) + len(v.encode()) for k, v in mapping.items())
