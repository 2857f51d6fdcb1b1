"""``postroom apikey``: create, list and revoke API keys.

``create`` prints the key once, on standard output and alone on its
line so that scripts can capture it (``KEY=$(postroom apikey create
app)``); what it is and that it will not be shown again goes to
standard error. Only a hash is stored, so a lost key is revoked and
replaced, never recovered. Without ``--scope`` a key may only send
mail (``mail.send``): the least a sending application needs, where
SendGrid's default is full access.

``list`` prints one key per line: id, state, created, last used,
scopes, name. Works while the server runs (one short transaction).
"""

from __future__ import annotations

import argparse
import sys

from postroom.api import keys
from postroom.cli.common import load_config
from postroom.errors import UserError
from postroom.store import api_keys as table
from postroom.store import db


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "apikey",
        help="manage API keys",
        description="Manage the keys that authenticate HTTP API calls "
        "(and SMTP AUTH as user 'apikey').",
    )
    sub = parser.add_subparsers(dest="apikey_command", metavar="ACTION")
    sub.required = True

    create = sub.add_parser("create", help="make a key and print it once")
    create.add_argument("name", help="what the key is for, e.g. the app's name")
    create.add_argument(
        "--scope",
        action="append",
        choices=keys.SCOPES,
        help=f"a scope to grant; repeat for more (default: {keys.MAIL_SEND})",
    )
    create.set_defaults(func=_create)

    lst = sub.add_parser("list", help="list keys (never their secrets)")
    lst.set_defaults(func=_list)

    revoke = sub.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("id", help="the key's id, as `apikey list` shows it")
    revoke.set_defaults(func=_revoke)


def _create(args: argparse.Namespace) -> int:
    name = args.name.strip()
    if not name or not name.isprintable():
        raise UserError(f"not a usable key name: {args.name!r}")
    scopes = keys.check_scopes(args.scope or [keys.MAIL_SEND])
    engine = db.create_engine(load_config(args).database_url)
    try:
        with engine.begin() as conn:
            made = keys.create(conn, name, scopes)
    finally:
        engine.dispose()
    print(
        f"API key {made.key.id} ({', '.join(scopes)}); it will not be shown again:",
        file=sys.stderr,
    )
    print(made.plaintext)
    return 0


def _list(args: argparse.Namespace) -> int:
    engine = db.create_engine(load_config(args).database_url)
    try:
        with engine.connect() as conn:
            found = table.list_all(conn)
    finally:
        engine.dispose()
    for key in found:
        used = key.last_used_at.strftime(_TIME) if key.last_used_at else "never"
        state = "revoked" if key.revoked else "active"
        print(
            f"{key.id}  {state}  {key.created_at.strftime(_TIME)}  {used}  "
            f"{','.join(key.scopes)}  {key.name}"
        )
    return 0


_TIME = "%Y-%m-%dT%H:%M:%SZ"


def _revoke(args: argparse.Namespace) -> int:
    engine = db.create_engine(load_config(args).database_url)
    try:
        with engine.begin() as conn:
            done = table.revoke(conn, args.id)
    finally:
        engine.dispose()
    if not done:
        raise UserError(f"no active API key with id {args.id}")
    return 0
