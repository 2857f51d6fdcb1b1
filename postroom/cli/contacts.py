"""``postroom contacts``: import, export, list and verify contacts.

    postroom contacts import FILE [--list L]   CSV in: upsert by address;
                                              bad rows reported by line
    postroom contacts export [--list L] [FILE] CSV out (stdout without FILE)
    postroom contacts list [--list L] [--status S] [--limit N]
    postroom contacts verify EMAIL... | --list L
                                              queue confirmation mails
    postroom contacts field add NAME TYPE     define a custom field
    postroom contacts field list | del NAME

``L`` is a list's id or name. Import and export stream the file
(``campaigns/csvio.py``) and show a progress bar (Rich) on a terminal.
``import`` exits 1 when any row was refused, after importing the
others, so a script notices. ``verify`` queues the mails into the
node's queue (the ``cli`` spool), so a running ``postroom serve``
delivers them; the links point at ``campaigns.confirm_url_base``.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path
from typing import TextIO

import sqlalchemy as sa
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from postroom.campaigns import contacts, csvio, lists, optin, segments
from postroom.cli.common import load_config
from postroom.errors import ContactError
from postroom.store import contacts as table
from postroom.store import db

# How many refused rows to print; the count covers the rest.
SHOW_ERRORS = 50


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "contacts", help="manage contacts",
        description="Import, export, list and verify contacts.")
    sub = parser.add_subparsers(dest="contacts_command", metavar="ACTION")
    sub.required = True

    imp = sub.add_parser("import", help="import contacts from a CSV file")
    imp.add_argument("file", type=Path)
    imp.add_argument("--list", dest="list_name", metavar="LIST",
                     help="also add every imported contact to this list")
    imp.set_defaults(func=_import)

    exp = sub.add_parser("export", help="export contacts as CSV")
    exp.add_argument("file", type=Path, nargs="?",
                     help="where to write (default: standard output)")
    exp.add_argument("--list", dest="list_name", metavar="LIST")
    exp.set_defaults(func=_export)

    lst = sub.add_parser("list", help="list contacts")
    lst.add_argument("--list", dest="list_name", metavar="LIST")
    lst.add_argument("--status", choices=table.STATUSES)
    lst.add_argument("--limit", type=int, default=1000)
    lst.set_defaults(func=_list)

    verify = sub.add_parser("verify", help="send confirmation mails")
    verify.add_argument("emails", nargs="*", metavar="EMAIL")
    verify.add_argument("--list", dest="list_name", metavar="LIST",
                        help="every contact of this list not yet verified")
    verify.set_defaults(func=_verify)

    field = sub.add_parser("field", help="custom field definitions")
    fsub = field.add_subparsers(dest="field_command", metavar="ACTION")
    fsub.required = True
    add = fsub.add_parser("add", help="define a custom field")
    add.add_argument("name")
    add.add_argument("type", choices=table.FIELD_TYPES)
    add.set_defaults(func=_field_add)
    fsub.add_parser("list", help="list custom fields").set_defaults(
        func=_field_list)
    delete = fsub.add_parser("del", help="delete a custom field")
    delete.add_argument("name")
    delete.set_defaults(func=_field_del)


def _import(args: argparse.Namespace) -> int:
    engine = _engine(args)
    list_id = _list_id(engine, args.list_name)
    try:
        raw = args.file.open("rb")
    except OSError as e:
        raise ContactError(f"{args.file}: {e.strerror}") from None
    total = args.file.stat().st_size
    # Text decoded on the fly; utf-8-sig drops the BOM spreadsheets write.
    text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
    with raw, _bar(DownloadColumn()) as bar:
        task = bar.add_task("importing", total=total)
        try:
            report = csvio.import_csv(
                engine, text, list_id=list_id,
                progress=lambda _rows: bar.update(task, completed=raw.tell()))
        except UnicodeDecodeError:
            raise ContactError(f"{args.file}: not UTF-8 text") from None
    for line, message in report.errors[:SHOW_ERRORS]:
        print(f"{args.file}:{line}: {message}", file=sys.stderr)
    if report.error_count > SHOW_ERRORS:
        print(f"... and {report.error_count - SHOW_ERRORS} more refused rows",
              file=sys.stderr)
    print(f"{report.created} created, {report.updated} updated, "
          f"{report.error_count} refused")
    return 1 if report.error_count else 0


def _export(args: argparse.Namespace) -> int:
    engine = _engine(args)
    list_id = _list_id(engine, args.list_name)
    with engine.connect() as conn:
        where = None if list_id is None else segments.members_of(list_id)
        total = contacts.count(conn, where)
    out: TextIO
    if args.file is None:
        csvio.export_csv(engine, sys.stdout, list_id=list_id)
        return 0
    try:
        out = args.file.open("w", encoding="utf-8", newline="")
    except OSError as e:
        raise ContactError(f"{args.file}: {e.strerror}") from None
    with out, _bar(MofNCompleteColumn()) as bar:
        task = bar.add_task("exporting", total=total)
        written = csvio.export_csv(
            engine, out, list_id=list_id,
            progress=lambda n: bar.update(task, completed=n))
    print(f"{written} exported", file=sys.stderr)
    return 0


def _list(args: argparse.Namespace) -> int:
    engine = _engine(args)
    list_id = _list_id(engine, args.list_name)
    where: list[sa.ColumnElement[bool]] = []
    if list_id is not None:
        where.append(segments.members_of(list_id))
    if args.status:
        where.append(table.contacts.c.status == args.status)
    with engine.connect() as conn:
        found = contacts.search(conn, sa.and_(sa.true(), *where),
                                limit=args.limit)
    for c in found:
        name = " ".join(filter(None, (c.first_name, c.last_name)))
        print(f"{c.id}  {c.status:<12}  {c.email}  {name}".rstrip())
    return 0


def _verify(args: argparse.Namespace) -> int:
    if bool(args.emails) == bool(args.list_name):
        raise ContactError("name addresses or --list, not both or neither")
    config = load_config(args)
    engine = db.create_engine(config.database_url)
    with engine.connect() as conn:
        if args.list_name:
            list_id = lists.resolve(conn, args.list_name).id
            # XXX: the whole list is read, and its mails composed, in
            # memory at once, because one spool session per run keeps
            # the CLI simple; fine for thousands, not for millions.
            wanted = contacts.search(
                conn, segments.members_of(list_id), limit=10**9)
        else:
            wanted = [optin.find(conn, e) for e in args.emails]
    queued = optin.send_from_cli(config, engine, wanted, time.time())
    print(f"{queued} confirmation mails queued, "
          f"{len(wanted) - queued} contacts skipped (verified, unsubscribed, "
          "bounced or suppressed)")
    return 0


def _field_add(args: argparse.Namespace) -> int:
    with _engine(args).begin() as conn:
        contacts.define_field(conn, args.name, args.type)
    return 0


def _field_list(args: argparse.Namespace) -> int:
    with _engine(args).connect() as conn:
        for name, kind in contacts.field_types(conn).items():
            print(f"{name}  {kind}")
    return 0


def _field_del(args: argparse.Namespace) -> int:
    with _engine(args).begin() as conn:
        contacts.delete_field(conn, args.name)
    return 0


def _bar(amount: DownloadColumn | MofNCompleteColumn) -> Progress:
    # On stderr, so that an export to stdout stays clean.
    console = Console(stderr=True)
    return Progress(TextColumn("{task.description}"), BarColumn(), amount,
                    TimeRemainingColumn(), console=console, transient=True,
                    # Off the terminal Rich would still end with a blank
                    # line, which a script reading stderr would see.
                    disable=not console.is_terminal)


def _list_id(engine: sa.Engine, name: str | None) -> str | None:
    if name is None:
        return None
    with engine.connect() as conn:
        return lists.resolve(conn, name).id


def _engine(args: argparse.Namespace) -> sa.Engine:
    return db.create_engine(load_config(args).database_url)
