"""Stored templates and their versions (the rows; rendering is in
``postroom.campaigns``).

A template is a name and a pointer to its active version, with an id in
SendGrid's form for dynamic templates, ``d-`` and 32 hex digits, so
that a SendGrid client's ``template_id`` finds it. Its versions hold
the content: a subject, an HTML part, an optional text part (NULL:
generate it from the HTML) and optional test data (a JSON object) for
previews. Version ids are UUIDs, as SendGrid's are.

Which version is active is kept in one place, ``templates.
active_version_id``, rather than as a flag on each version (SendGrid's
API shows it as ``active`` on the version; ``TemplateVersion.active``
is computed the same way). One column makes "at most one active
version" true by construction and activation a single UPDATE; flags
would need a partial unique index, which not every database has.
There is no foreign key on that column because it would make the two
tables refer to each other, which SQLite's ``create_all`` cannot set
up; ``set_active`` checks that the version belongs to the template.

Functions take an open ``sa.Connection`` so that callers may group
them in one transaction, and raise ``UnknownTemplate`` for an id that
is not there.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from postroom.errors import UnknownTemplate
from postroom.store.db import metadata

# SendGrid's limits for names; subjects are checked by the caller.
MAX_NAME_LENGTH = 100

templates = sa.Table(
    "templates",
    metadata,
    sa.Column("id", sa.String(34), primary_key=True),
    sa.Column("name", sa.String(MAX_NAME_LENGTH), nullable=False),
    sa.Column("active_version_id", sa.String(36), nullable=True),
    # Stored in UTC. SQLite keeps no zone, so reads re-attach UTC.
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

template_versions = sa.Table(
    "template_versions",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column(
        "template_id",
        sa.String(34),
        sa.ForeignKey("templates.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("name", sa.String(MAX_NAME_LENGTH), nullable=False),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("html", sa.Text, nullable=False),
    sa.Column("text", sa.Text, nullable=True),
    sa.Column("test_data", sa.Text, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True)
class Template:
    """One template as stored. Times are timezone-aware UTC."""

    id: str
    name: str
    active_version_id: str | None
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True)
class TemplateVersion:
    """One version as stored; ``text`` None means "generate from HTML"."""

    id: str
    template_id: str
    name: str
    subject: str
    html: str
    text: str | None
    test_data: dict[str, Any] | None
    created_at: dt.datetime
    updated_at: dt.datetime
    active: bool


def new_template_id() -> str:
    return "d-" + secrets.token_hex(16)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def insert_template(conn: sa.Connection, name: str) -> Template:
    now = _now()
    template = Template(new_template_id(), name, None, now, now)
    conn.execute(
        templates.insert().values(
            id=template.id,
            name=name,
            active_version_id=None,
            created_at=now,
            updated_at=now,
        )
    )
    return template


def get_template(conn: sa.Connection, template_id: str) -> Template:
    row = conn.execute(
        sa.select(templates).where(templates.c.id == template_id)
    ).one_or_none()
    if row is None:
        raise UnknownTemplate(f"no such template: {template_id}")
    return _template(row)


def list_templates(conn: sa.Connection) -> list[Template]:
    """Every template, most recently updated first."""
    rows = conn.execute(
        sa.select(templates).order_by(
            templates.c.updated_at.desc(), templates.c.id
        )
    )
    return [_template(row) for row in rows]


def rename_template(conn: sa.Connection, template_id: str, name: str) -> None:
    _touch(conn, template_id, name=name)


def delete_template(conn: sa.Connection, template_id: str) -> None:
    # Versions first, explicitly: the cascade needs SQLite's foreign_keys
    # pragma, which another tool opening the file may not set.
    conn.execute(
        template_versions.delete().where(
            template_versions.c.template_id == template_id
        )
    )
    result = conn.execute(templates.delete().where(templates.c.id == template_id))
    if result.rowcount == 0:
        raise UnknownTemplate(f"no such template: {template_id}")


def insert_version(
    conn: sa.Connection,
    template_id: str,
    *,
    name: str,
    subject: str,
    html: str,
    text: str | None,
    test_data: dict[str, Any] | None,
) -> str:
    """Add a version to *template_id*; return the new version's id."""
    get_template(conn, template_id)
    now = _now()
    version_id = str(uuid.uuid4())
    conn.execute(
        template_versions.insert().values(
            id=version_id,
            template_id=template_id,
            name=name,
            subject=subject,
            html=html,
            text=text,
            test_data=None if test_data is None else json.dumps(test_data),
            created_at=now,
            updated_at=now,
        )
    )
    _touch(conn, template_id)
    return version_id


def get_version(
    conn: sa.Connection, template_id: str, version_id: str
) -> TemplateVersion:
    template = get_template(conn, template_id)
    row = conn.execute(
        sa.select(template_versions).where(
            template_versions.c.id == version_id,
            template_versions.c.template_id == template_id,
        )
    ).one_or_none()
    if row is None:
        raise UnknownTemplate(
            f"template {template_id} has no version {version_id}"
        )
    return _version(row, template.active_version_id)


def list_versions(conn: sa.Connection, template_id: str) -> list[TemplateVersion]:
    """The versions of *template_id*, oldest first."""
    template = get_template(conn, template_id)
    rows = conn.execute(
        sa.select(template_versions)
        .where(template_versions.c.template_id == template_id)
        .order_by(template_versions.c.created_at, template_versions.c.id)
    )
    return [_version(row, template.active_version_id) for row in rows]


def update_version(
    conn: sa.Connection, template_id: str, version_id: str, **values: Any
) -> None:
    """Change columns of a version (name, subject, html, text, test_data)."""
    get_version(conn, template_id, version_id)
    if "test_data" in values and values["test_data"] is not None:
        values["test_data"] = json.dumps(values["test_data"])
    conn.execute(
        template_versions.update()
        .where(template_versions.c.id == version_id)
        .values(updated_at=_now(), **values)
    )
    _touch(conn, template_id)


def delete_version(conn: sa.Connection, template_id: str, version_id: str) -> None:
    get_version(conn, template_id, version_id)
    conn.execute(
        template_versions.delete().where(template_versions.c.id == version_id)
    )
    _touch(conn, template_id)


def set_active(conn: sa.Connection, template_id: str, version_id: str | None) -> None:
    """Make *version_id* (which must belong to the template) active."""
    if version_id is not None:
        get_version(conn, template_id, version_id)
    _touch(conn, template_id, active_version_id=version_id)


def _touch(conn: sa.Connection, template_id: str, **values: Any) -> None:
    result = conn.execute(
        templates.update()
        .where(templates.c.id == template_id)
        .values(updated_at=_now(), **values)
    )
    if result.rowcount == 0:
        raise UnknownTemplate(f"no such template: {template_id}")


def _utc(value: dt.datetime) -> dt.datetime:
    # SQLite keeps no zone, so reads re-attach UTC.
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _template(row: sa.Row[Any]) -> Template:
    return Template(
        row.id,
        row.name,
        row.active_version_id,
        _utc(row.created_at),
        _utc(row.updated_at),
    )


def _version(row: sa.Row[Any], active_id: str | None) -> TemplateVersion:
    return TemplateVersion(
        id=row.id,
        template_id=row.template_id,
        name=row.name,
        subject=row.subject,
        html=row.html,
        text=row.text,
        test_data=None if row.test_data is None else json.loads(row.test_data),
        created_at=_utc(row.created_at),
        updated_at=_utc(row.updated_at),
        active=row.id == active_id,
    )
