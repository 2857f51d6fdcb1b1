"""``postroom user``: add, list, re-password and delete accounts.

Passwords come from a terminal prompt, asked twice, or with
``--password-stdin`` from the first line of standard input, so that they
never appear in the process list or the shell history as an argument
would. Commands that succeed print nothing, like ``useradd``; ``list``
prints one account per line: address, creation time (UTC), state.
"""

from __future__ import annotations

import argparse
import getpass
import sys

import sqlalchemy as sa

from postroom.cli.common import load_config
from postroom.errors import UserError
from postroom.server import passwords
from postroom.store import db, users


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "user",
        help="manage accounts",
        description="Manage the accounts that may log in to submit or read mail.",
    )
    sub = parser.add_subparsers(dest="user_command", metavar="ACTION")
    sub.required = True

    add = sub.add_parser("add", help="create an account")
    add.add_argument("address", help="the account's address, local@domain")
    _password_option(add)
    add.set_defaults(func=_add)

    lst = sub.add_parser("list", help="list accounts")
    lst.set_defaults(func=_list)

    passwd = sub.add_parser("passwd", help="set an account's password")
    passwd.add_argument("address")
    _password_option(passwd)
    passwd.set_defaults(func=_passwd)

    delete = sub.add_parser("del", help="delete an account")
    delete.add_argument("address")
    delete.set_defaults(func=_del)


def _password_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input "
        "instead of prompting",
    )


def _add(args: argparse.Namespace) -> int:
    # Check the address before asking for a password it would waste.
    address = users.normalize_address(args.address)
    password_hash = passwords.hash_password(_read_password(args))
    with _engine(args).begin() as conn:
        users.add(conn, address, password_hash)
    return 0


def _list(args: argparse.Namespace) -> int:
    with _engine(args).connect() as conn:
        accounts = users.list_all(conn)
    width = max((len(u.address) for u in accounts), default=0)
    for user in accounts:
        created = user.created_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        state = "disabled" if user.disabled else "active"
        print(f"{user.address:<{width}}  {created}  {state}")
    return 0


def _passwd(args: argparse.Namespace) -> int:
    address = users.normalize_address(args.address)
    engine = _engine(args)
    # Fail on an unknown account before prompting, not after.
    with engine.connect() as conn:
        if users.get(conn, address) is None:
            raise UserError(f"no such user: {address}")
    password_hash = passwords.hash_password(_read_password(args))
    with engine.begin() as conn:
        users.set_password(conn, address, password_hash)
    return 0


def _del(args: argparse.Namespace) -> int:
    with _engine(args).begin() as conn:
        users.delete(conn, args.address)
    return 0


def _engine(args: argparse.Namespace) -> sa.Engine:
    return db.create_engine(load_config(args).database_url)


def _read_password(args: argparse.Namespace) -> str:
    """The new password, from stdin or from a prompt asked twice.

    Raises UserError when it is empty or the two entries differ.
    """
    if args.password_stdin:
        # One line; only the line ending is removed, since leading or
        # trailing spaces may be part of the password.
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    else:
        try:
            password = getpass.getpass("Password: ")
            again = getpass.getpass("Repeat password: ")
        except EOFError:
            raise UserError("no password given") from None
        if password != again:
            raise UserError("passwords do not match")
    if not password:
        raise UserError("empty password refused")
    return password
