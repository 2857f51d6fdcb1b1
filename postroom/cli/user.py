"""``postroom user``: add, list, re-password, set quotas, delete accounts.

Passwords come from a terminal prompt, asked twice, or with
``--password-stdin`` from the first line of standard input, so that they
never appear in the process list or the shell history as an argument
would. Commands that succeed print nothing, like ``useradd``; ``list``
prints one account per line: address, creation time (UTC), state, quota
(``default`` for ``mailbox.default_quota``, ``none`` for no limit) and
bytes stored.

Quotas are sizes such as ``500M`` or ``2G`` (powers of 1024), ``0`` or
``none`` for no limit, ``default`` for the configured default.
"""

from __future__ import annotations

import argparse
import getpass
import sys

import sqlalchemy as sa

from postroom.cli.common import load_config
from postroom.errors import BadMailboxName, UserError
from postroom.mailbox import names
from postroom.mailbox import quota as quota_mod
from postroom.mailbox.store import MailStore
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
    add.add_argument(
        "--quota",
        metavar="SIZE",
        help="storage limit, e.g. 500M or 2G; 0 or none for no limit "
        "(default: mailbox.default_quota)",
    )
    add.set_defaults(func=_add)

    lst = sub.add_parser("list", help="list accounts")
    lst.set_defaults(func=_list)

    passwd = sub.add_parser("passwd", help="set an account's password")
    passwd.add_argument("address")
    _password_option(passwd)
    passwd.set_defaults(func=_passwd)

    quota = sub.add_parser("quota", help="set an account's storage limit")
    quota.add_argument("address")
    quota.add_argument("size", help="e.g. 500M or 2G; 0 or none; default")
    quota.set_defaults(func=_quota)

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
    # Check the address before asking for a password it would waste,
    # including that it can name a mailbox ("a/b@x" logs in but could
    # never receive: addressing and the store refuse such names).
    address = users.normalize_address(args.address)
    names.split_address(address)
    limit = _parse_quota(args.quota) if args.quota is not None else None
    password_hash = passwords.hash_password(_read_password(args))
    with _engine(args).begin() as conn:
        users.add(conn, address, password_hash, quota=limit)
    return 0


def _list(args: argparse.Namespace) -> int:
    config = load_config(args)
    with db.create_engine(config.database_url).connect() as conn:
        accounts = users.list_all(conn)
    store = MailStore(config.mailbox_dir)
    width = max((len(u.address) for u in accounts), default=0)
    for user in accounts:
        created = user.created_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        state = "disabled" if user.disabled else "active"
        limit = _show_quota(user.quota)
        try:
            used = str(store.usage(user.address))
        except BadMailboxName:
            used = "-"
        print(f"{user.address:<{width}}  {created}  {state}  {limit}  {used}")
    return 0


def _quota(args: argparse.Namespace) -> int:
    limit = None if args.size == "default" else _parse_quota(args.size)
    with _engine(args).begin() as conn:
        users.set_quota(conn, args.address, limit)
    return 0


def _parse_quota(text: str) -> int:
    if text.strip().lower() == "none":
        return 0
    try:
        return quota_mod.parse_size(text)
    except ValueError as e:
        raise UserError(str(e)) from None


def _show_quota(limit: int | None) -> str:
    if limit is None:
        return "default"
    return "none" if limit == 0 else quota_mod.format_size(limit)


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
