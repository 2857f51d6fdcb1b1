"""Templates: what the CLI and the API call to keep and render them.

The rows live in ``postroom.store.templates``; this module adds what
the rows do not know: a version is compiled before it is stored (so a
syntax error is reported at ``version add``, with its line, and never
at send time), compiled versions are cached, and rendering picks the
active version.

The cache. ``compiled(version)`` keeps up to ``CACHE_SIZE`` compiled
versions per process, keyed by the version's id and its three sources:
a compilation is used only for exactly the sources it was made from,
however quickly a version is updated (a time stamp could repeat), and
old entries simply age out. Hashing the sources costs about a
microsecond per kilobyte, nothing next to a render. A campaign fetches its compiled
version once and calls ``render`` per recipient, so the cache matters
for the API's per-request sends.

Typical use::

    with engine.begin() as conn:
        t = templates.create_template(conn, "Invitation")
        v = templates.add_version(conn, t.id, name="v1",
                                  subject="Hi {{ first_name }}",
                                  html=html, activate=True)
    with engine.connect() as conn:
        msg = templates.render(conn, t.id, {"first_name": "Ann"})
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from postroom.campaigns import rendering
from postroom.campaigns.rendering import CompiledVersion, Rendered
from postroom.errors import TemplateError
from postroom.store import templates as rows
from postroom.store.templates import Template, TemplateVersion

# SendGrid caps a subject at 255 characters; a header line should not
# be longer anyway (RFC 5322 §2.1.1 recommends 78, allows 998).
MAX_SUBJECT_LENGTH = 255
CACHE_SIZE = 256

__all__ = [
    "Rendered",
    "Template",
    "TemplateVersion",
    "activate_version",
    "add_version",
    "compiled",
    "create_template",
    "delete_template",
    "delete_version",
    "get_template",
    "get_version",
    "list_templates",
    "list_versions",
    "preview",
    "render",
    "update_template",
    "update_version",
]


def create_template(conn: sa.Connection, name: str) -> Template:
    """Create an empty template named *name*; raise TemplateError for a
    blank or over-long name."""
    return rows.insert_template(conn, _check_name(name))


def list_templates(conn: sa.Connection) -> list[Template]:
    """Every template, most recently updated first."""
    return rows.list_templates(conn)


def get_template(conn: sa.Connection, template_id: str) -> Template:
    """The template *template_id*; raise UnknownTemplate if none."""
    return rows.get_template(conn, template_id)


def update_template(conn: sa.Connection, template_id: str, name: str) -> None:
    """Rename a template; raise UnknownTemplate if none."""
    rows.rename_template(conn, template_id, _check_name(name))


def delete_template(conn: sa.Connection, template_id: str) -> None:
    """Delete a template and all its versions; UnknownTemplate if none."""
    rows.delete_template(conn, template_id)


def list_versions(conn: sa.Connection, template_id: str) -> list[TemplateVersion]:
    """The versions of *template_id*, oldest first."""
    return rows.list_versions(conn, template_id)


def get_version(
    conn: sa.Connection, template_id: str, version_id: str
) -> TemplateVersion:
    """One version; raise UnknownTemplate if it is not the template's."""
    return rows.get_version(conn, template_id, version_id)


def add_version(
    conn: sa.Connection,
    template_id: str,
    *,
    subject: str,
    html: str,
    text: str | None = None,
    name: str | None = None,
    test_data: dict[str, Any] | None = None,
    activate: bool = False,
) -> TemplateVersion:
    """Compile and store a new version of *template_id*.

    *text* None (or blank) means "generate the text part from the
    HTML": a message with an empty text alternative reads as broken in
    a text-only client. *name*
    defaults to "v<n>". A template's first version is activated even
    without *activate*, so that a new template can be used at once.

    Raises UnknownTemplate, or TemplateError naming the part and line
    of a syntax error (nothing is stored then).
    """
    existing = rows.list_versions(conn, template_id)
    text = _text_or_none(text)
    name = _check_name(name or f"v{len(existing) + 1}")
    _check_subject(subject)
    rendering.compile_version(f"template {template_id}", subject, html, text)
    version_id = rows.insert_version(
        conn,
        template_id,
        name=name,
        subject=subject,
        html=html,
        text=text,
        test_data=test_data,
    )
    if activate or not existing:
        rows.set_active(conn, template_id, version_id)
    return rows.get_version(conn, template_id, version_id)


def update_version(
    conn: sa.Connection,
    template_id: str,
    version_id: str,
    **changes: Any,
) -> TemplateVersion:
    """Change a version's name, subject, html, text or test_data.

    The result is compiled before it is stored; raises UnknownTemplate
    or TemplateError as ``add_version`` does.
    """
    allowed = {"name", "subject", "html", "text", "test_data"}
    if not set(changes) <= allowed:
        raise TemplateError(f"cannot change {', '.join(set(changes) - allowed)}")
    current = rows.get_version(conn, template_id, version_id)
    if "text" in changes:
        changes["text"] = _text_or_none(changes["text"])
    if "name" in changes:
        changes["name"] = _check_name(changes["name"])
    subject = changes.get("subject", current.subject)
    _check_subject(subject)
    rendering.compile_version(
        _label(current),
        subject,
        changes.get("html", current.html),
        changes.get("text", current.text),
    )
    rows.update_version(conn, template_id, version_id, **changes)
    return rows.get_version(conn, template_id, version_id)


def delete_version(conn: sa.Connection, template_id: str, version_id: str) -> None:
    """Delete a version. The active one is refused: activate another
    first, or delete the template (SendGrid refuses it too)."""
    version = rows.get_version(conn, template_id, version_id)
    if version.active:
        raise TemplateError(
            f"version {version_id} is the active version of {template_id};"
            " activate another first"
        )
    rows.delete_version(conn, template_id, version_id)


def activate_version(conn: sa.Connection, template_id: str, version_id: str) -> None:
    """Make *version_id* the version that ``render`` uses."""
    rows.set_active(conn, template_id, version_id)


def active_version(conn: sa.Connection, template_id: str) -> TemplateVersion:
    """The active version; raise TemplateError when there is none."""
    template = rows.get_template(conn, template_id)
    if template.active_version_id is None:
        raise TemplateError(f"template {template_id} has no active version")
    return rows.get_version(conn, template_id, template.active_version_id)


def render(
    conn: sa.Connection,
    template_id: str,
    data: Mapping[str, Any] | None = None,
    substitutions: Mapping[str, str] | None = None,
) -> Rendered:
    """Render the active version of *template_id* with *data*.

    Raises UnknownTemplate, or TemplateError (no active version, or an
    error while rendering, with part and line).
    """
    return compiled(active_version(conn, template_id)).render(data, substitutions)


def preview(
    conn: sa.Connection,
    template_id: str,
    data: Mapping[str, Any] | None = None,
    version_id: str | None = None,
) -> Rendered:
    """Render a version (default: the active one) with sample *data*,
    or with the version's own test data when *data* is None."""
    if version_id is None:
        version = active_version(conn, template_id)
    else:
        version = rows.get_version(conn, template_id, version_id)
    if data is None:
        data = version.test_data or {}
    return compiled(version).render(data)


_cache: OrderedDict[tuple[str, str, str, str | None], CompiledVersion] = (
    OrderedDict()
)
_cache_lock = threading.Lock()


def compiled(version: TemplateVersion) -> CompiledVersion:
    """*version* compiled, from the cache when it has not changed."""
    key = (version.id, version.subject, version.html, version.text)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    # Compile outside the lock: it takes milliseconds, and two threads
    # compiling one version at once merely do the work twice.
    result = rendering.compile_version(
        _label(version), version.subject, version.html, version.text
    )
    with _cache_lock:
        _cache[key] = result
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return result


def _label(version: TemplateVersion) -> str:
    return f"template {version.template_id} version {version.id} ({version.name})"


def _text_or_none(text: str | None) -> str | None:
    return text if text is not None and text.strip() else None


def _check_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise TemplateError("empty name")
    if len(name) > rows.MAX_NAME_LENGTH:
        raise TemplateError(f"name longer than {rows.MAX_NAME_LENGTH} characters")
    return name


def _check_subject(subject: str) -> None:
    if not subject.strip():
        raise TemplateError("empty subject")
    if len(subject) > MAX_SUBJECT_LENGTH:
        raise TemplateError(f"subject longer than {MAX_SUBJECT_LENGTH} characters")
