"""``postroom template``: keep mail templates and their versions.

    postroom template create NAME            prints the new id (d-...)
    postroom template list                   id, versions, active version, name
    postroom template show ID                the template and its versions
    postroom template version add ID --subject S --html FILE
             [--text FILE] [--name N] [--test-data JSON_FILE] [--activate]
                                             prints the new version's id
    postroom template version del ID VERSION_ID
    postroom template activate ID VERSION_ID
    postroom template preview ID [--version VERSION_ID] [--data JSON_FILE]
    postroom template delete ID

A version is compiled before it is stored, so a syntax error is
reported here, in one line with the part and line number, and the
version is not added. ``preview`` renders with the given data, else
with the version's test data, and prints the subject, the text part
and the HTML part.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from postroom.campaigns import templates
from postroom.cli.common import load_config
from postroom.errors import TemplateError
from postroom.store import db


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "template",
        help="manage mail templates",
        description="Manage stored mail templates and their versions.",
    )
    sub = parser.add_subparsers(dest="template_command", metavar="ACTION")
    sub.required = True

    create = sub.add_parser("create", help="create a template, print its id")
    create.add_argument("name")
    create.set_defaults(func=_create)

    lst = sub.add_parser("list", help="list templates")
    lst.set_defaults(func=_list)

    show = sub.add_parser("show", help="show a template and its versions")
    show.add_argument("id")
    show.set_defaults(func=_show)

    version = sub.add_parser("version", help="add or delete a version")
    vsub = version.add_subparsers(dest="version_command", metavar="ACTION")
    vsub.required = True
    add = vsub.add_parser("add", help="add a version, print its id")
    add.add_argument("id")
    add.add_argument("--subject", required=True)
    add.add_argument("--html", required=True, metavar="FILE", type=Path)
    add.add_argument(
        "--text", metavar="FILE", type=Path,
        help="text part (default: generated from the HTML)",
    )
    add.add_argument("--name", help="version name (default: v<n>)")
    add.add_argument(
        "--test-data", metavar="JSON_FILE", type=Path,
        help="sample data for previews, a JSON object",
    )
    add.add_argument(
        "--activate", action="store_true",
        help="make it the active version (the first version always is)",
    )
    add.set_defaults(func=_version_add)
    vdel = vsub.add_parser("del", help="delete a version that is not active")
    vdel.add_argument("id")
    vdel.add_argument("version_id")
    vdel.set_defaults(func=_version_del)

    activate = sub.add_parser("activate", help="make a version the active one")
    activate.add_argument("id")
    activate.add_argument("version_id")
    activate.set_defaults(func=_activate)

    preview = sub.add_parser("preview", help="render with sample data")
    preview.add_argument("id")
    preview.add_argument("--version", dest="version_id", metavar="VERSION_ID")
    preview.add_argument("--data", metavar="JSON_FILE", type=Path)
    preview.set_defaults(func=_preview)

    delete = sub.add_parser("delete", help="delete a template and its versions")
    delete.add_argument("id")
    delete.set_defaults(func=_delete)


def _create(args: argparse.Namespace) -> int:
    with _engine(args).begin() as conn:
        template = templates.create_template(conn, args.name)
    print(template.id)
    return 0


def _list(args: argparse.Namespace) -> int:
    with _engine(args).connect() as conn:
        for t in templates.list_templates(conn):
            count = len(templates.list_versions(conn, t.id))
            active = t.active_version_id or "-"
            print(f"{t.id}  {count:>3}  {active:<36}  {t.name}")
    return 0


def _show(args: argparse.Namespace) -> int:
    with _engine(args).connect() as conn:
        t = templates.get_template(conn, args.id)
        versions = templates.list_versions(conn, args.id)
    print(f"id:       {t.id}")
    print(f"name:     {t.name}")
    print(f"created:  {_time(t.created_at)}")
    print(f"updated:  {_time(t.updated_at)}")
    for v in versions:
        mark = "*" if v.active else " "
        text = "text" if v.text is not None else "text generated"
        print(f"{mark} {v.id}  {_time(v.updated_at)}  {v.name}  [{text}]"
              f"  subject: {v.subject}")
    return 0


def _version_add(args: argparse.Namespace) -> int:
    html = _read(args.html)
    text = _read(args.text) if args.text is not None else None
    test_data = _json(args.test_data) if args.test_data is not None else None
    with _engine(args).begin() as conn:
        version = templates.add_version(
            conn,
            args.id,
            subject=args.subject,
            html=html,
            text=text,
            name=args.name,
            test_data=test_data,
            activate=args.activate,
        )
    print(version.id)
    return 0


def _version_del(args: argparse.Namespace) -> int:
    with _engine(args).begin() as conn:
        templates.delete_version(conn, args.id, args.version_id)
    return 0


def _activate(args: argparse.Namespace) -> int:
    with _engine(args).begin() as conn:
        templates.activate_version(conn, args.id, args.version_id)
    return 0


def _preview(args: argparse.Namespace) -> int:
    data = _json(args.data) if args.data is not None else None
    with _engine(args).connect() as conn:
        rendered = templates.preview(conn, args.id, data, args.version_id)
    print(f"Subject: {rendered.subject}")
    print("\n--- text/plain ---")
    print(rendered.text.rstrip("\n"))
    print("\n--- text/html ---")
    print(rendered.html.rstrip("\n"))
    return 0


def _delete(args: argparse.Namespace) -> int:
    with _engine(args).begin() as conn:
        templates.delete_template(conn, args.id)
    return 0


def _engine(args: argparse.Namespace) -> sa.Engine:
    return db.create_engine(load_config(args).database_url)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise TemplateError(f"{path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise TemplateError(f"{path}: not UTF-8 text") from None


def _json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(_read(path))
    except json.JSONDecodeError as e:
        raise TemplateError(
            f"{path}: bad JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from None
    if not isinstance(value, dict):
        raise TemplateError(f"{path}: expected a JSON object")
    return value


def _time(value: Any) -> str:
    return str(value.strftime("%Y-%m-%dT%H:%M:%SZ"))
