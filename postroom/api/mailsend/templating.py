"""``template_id``: render a stored template once per personalization.

The template (``postroom.campaigns.templates``, its active version)
gives each personalization's subject, HTML and text, rendered with the
personalization's ``dynamic_template_data`` (Handlebars-style
``{{ name }}`` in Jinja2's sandbox) and its legacy ``substitutions``.
A template with a non-empty subject sets the subject, as SendGrid's
dynamic templates do; otherwise the personalization's or the request's
``subject`` is used.

Errors go back as 400s naming the field: an unknown id names
``template_id``; a render error (bad data for the template) names the
personalization's ``dynamic_template_data`` with the template's own
message (part and line).

Blocking (a database read, Jinja2, CSS inlining): call it in a thread.
"""

from __future__ import annotations

import sqlalchemy as sa

from postroom.api.mailsend.model import MailSend
from postroom.campaigns import templates
from postroom.campaigns.rendering import Rendered
from postroom.errors import TemplateError, UnknownTemplate


def render_all(
    engine: sa.Engine, request: MailSend
) -> tuple[list[Rendered], list[tuple[str, str]]]:
    """One ``Rendered`` per personalization, or the problems found
    (``(message, field)``); exactly one of the two is empty."""
    assert request.template_id is not None
    rendered: list[Rendered] = []
    problems: list[tuple[str, str]] = []
    with engine.connect() as conn:
        try:
            version = templates.active_version(conn, request.template_id)
        except UnknownTemplate:
            return [], [("The template_id is not a valid template ID.",
                         "template_id")]
        except TemplateError as e:  # no active version
            return [], [(str(e), "template_id")]
    try:
        compiled = templates.compiled(version)
    except TemplateError as e:  # stored versions compile; a cache miss re-does it
        return [], [(str(e), "template_id")]
    for i, p in enumerate(request.personalizations):
        try:
            rendered.append(
                compiled.render(p.dynamic_template_data, p.substitutions)
            )
        except TemplateError as e:
            problems.append(
                (str(e), f"personalizations.{i}.dynamic_template_data")
            )
    return ([], problems) if problems else (rendered, [])
