"""``postroom suppress``: the suppression lists (``suppressions.py``).

    postroom suppress list [--kind KIND] [--group ID]
    postroom suppress add KIND EMAIL... [--group ID] [--reason TEXT]
    postroom suppress remove KIND EMAIL... [--group ID]

KIND is one of bounce, unsubscribe, group_unsubscribe (with --group),
spamreport, invalid. ``list`` prints one address per line with its
list, time and reason. Works while the server runs.
"""

from __future__ import annotations

import argparse
import datetime as dt

from postroom import suppressions
from postroom.cli.common import load_config
from postroom.errors import UserError
from postroom.store import db


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("suppress", help="manage suppression lists")
    sub = parser.add_subparsers(dest="suppress_command", metavar="ACTION")
    sub.required = True

    lst = sub.add_parser("list", help="list suppressed addresses")
    lst.add_argument("--kind", choices=suppressions.KINDS)
    lst.add_argument("--group", type=int, default=0)
    lst.set_defaults(func=_list)

    for name, func, helptext in (
        ("add", _add, "put addresses on a list"),
        ("remove", _remove, "take addresses off a list"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("kind", choices=suppressions.KINDS)
        p.add_argument("emails", nargs="+", metavar="EMAIL")
        p.add_argument("--group", type=int, default=0)
        if name == "add":
            p.add_argument("--reason", default="added by the administrator")
        p.set_defaults(func=func)


def _check_group(args: argparse.Namespace, kind: str) -> None:
    if (kind == suppressions.GROUP_UNSUBSCRIBE) != bool(args.group):
        raise UserError("--group goes with group_unsubscribe, and only with it")


def _list(args: argparse.Namespace) -> int:
    kinds = [args.kind] if args.kind else list(suppressions.KINDS)
    engine = db.create_engine(load_config(args).database_url)
    try:
        with engine.connect() as conn:
            for kind in kinds:
                group = args.group if kind == suppressions.GROUP_UNSUBSCRIBE else 0
                for e in suppressions.entries(conn, kind, group_id=group, limit=10**9):
                    when = dt.datetime.fromtimestamp(e.created, dt.UTC)
                    where = f"{kind}:{e.group_id}" if e.group_id else kind
                    print(
                        f"{e.email}  {where}  {when:%Y-%m-%dT%H:%M:%SZ}  "
                        f"{e.reason or ''}".rstrip()
                    )
    finally:
        engine.dispose()
    return 0


def _add(args: argparse.Namespace) -> int:
    _check_group(args, args.kind)
    engine = db.create_engine(load_config(args).database_url)
    try:
        with engine.begin() as conn:
            if args.group and suppressions.group(conn, args.group) is None:
                raise UserError(f"no unsubscribe group {args.group}")
            suppressions.add(
                conn, args.kind, args.emails, group_id=args.group, reason=args.reason
            )
    finally:
        engine.dispose()
    return 0


def _remove(args: argparse.Namespace) -> int:
    _check_group(args, args.kind)
    engine = db.create_engine(load_config(args).database_url)
    try:
        with engine.begin() as conn:
            removed = suppressions.remove(
                conn, args.kind, args.emails, group_id=args.group
            )
    finally:
        engine.dispose()
    if removed < len(set(args.emails)):
        raise UserError(f"{len(set(args.emails)) - removed} address(es) not listed")
    return 0
