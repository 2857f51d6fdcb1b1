"""``postroom list``: contact lists.

    postroom list create NAME      prints the new list's id
    postroom list list             id, members, name
    postroom list delete LIST      the list goes, its contacts stay

``LIST`` is a list's id or name. Contacts join lists by
``postroom contacts import FILE --list LIST`` or over the API.
"""

from __future__ import annotations

import argparse

import sqlalchemy as sa

from postroom.campaigns import lists
from postroom.cli.common import load_config
from postroom.store import db


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "list", help="manage contact lists",
        description="Create, list and delete contact lists.")
    sub = parser.add_subparsers(dest="list_command", metavar="ACTION")
    sub.required = True

    create = sub.add_parser("create", help="create a list, print its id")
    create.add_argument("name")
    create.set_defaults(func=_create)

    sub.add_parser("list", help="list lists").set_defaults(func=_list)

    delete = sub.add_parser("delete", help="delete a list (not its contacts)")
    delete.add_argument("list_name", metavar="LIST")
    delete.set_defaults(func=_delete)


def _create(args: argparse.Namespace) -> int:
    with _engine(args).begin() as conn:
        made = lists.create(conn, args.name)
    print(made.id)
    return 0


def _list(args: argparse.Namespace) -> int:
    with _engine(args).connect() as conn:
        for item in lists.list_all(conn):
            print(f"{item.id}  {item.contact_count:>7}  {item.name}")
    return 0


def _delete(args: argparse.Namespace) -> int:
    with _engine(args).begin() as conn:
        lists.delete(conn, lists.resolve(conn, args.list_name).id)
    return 0


def _engine(args: argparse.Namespace) -> sa.Engine:
    return db.create_engine(load_config(args).database_url)
