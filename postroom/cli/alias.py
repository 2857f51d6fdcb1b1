"""``postroom alias``: add, delete and list aliases.

An alias is ``local@domain`` or ``@domain`` (the domain's catch-all);
its targets are accounts, other aliases or remote addresses
(``postroom.mailbox.addressing`` has the rules). ``add`` adds targets
to an alias, creating it; ``del`` removes the named targets, or the
whole alias when none are named. ``list`` prints one alias per line:
the alias, then its targets separated by commas.
"""

from __future__ import annotations

import argparse

import sqlalchemy as sa

from postroom.cli.common import load_config
from postroom.store import aliases, db


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "alias",
        help="manage aliases",
        description="Manage aliases: addresses that deliver to other addresses.",
    )
    sub = parser.add_subparsers(dest="alias_command", metavar="ACTION")
    sub.required = True

    add = sub.add_parser("add", help="add targets to an alias")
    add.add_argument("alias", help="local@domain, or @domain for a catch-all")
    add.add_argument("targets", nargs="+", metavar="target")
    add.set_defaults(func=_add)

    delete = sub.add_parser("del", help="delete an alias or some of its targets")
    delete.add_argument("alias")
    delete.add_argument("targets", nargs="*", metavar="target")
    delete.set_defaults(func=_del)

    lst = sub.add_parser("list", help="list aliases")
    lst.set_defaults(func=_list)


def _add(args: argparse.Namespace) -> int:
    with _engine(args).begin() as conn:
        aliases.add(conn, args.alias, args.targets)
    return 0


def _del(args: argparse.Namespace) -> int:
    with _engine(args).begin() as conn:
        aliases.delete(conn, args.alias, args.targets)
    return 0


def _list(args: argparse.Namespace) -> int:
    with _engine(args).connect() as conn:
        found = aliases.list_all(conn)
    width = max((len(a) for a, _t in found), default=0)
    for alias, targets in found:
        print(f"{alias:<{width}}  {', '.join(targets)}")
    return 0


def _engine(args: argparse.Namespace) -> sa.Engine:
    return db.create_engine(load_config(args).database_url)
