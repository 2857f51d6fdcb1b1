"""``postroom webhook``: Event Webhook endpoints and replays.

    postroom webhook add URL [--kind KIND ...]   prints id and secret
    postroom webhook list [--secrets]
    postroom webhook remove ID
    postroom webhook replay --from TIME --to TIME [--id ID]

Times are epoch seconds or ISO 8601 (``2026-12-04T18:00:00Z``; no zone
means UTC). A replay is queued as a row; the running node's sender
posts it (``webhooks/sender.py``). Works while the server runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from postroom import events
from postroom.cli.common import load_config
from postroom.errors import UserError
from postroom.store import db
from postroom.webhooks import endpoints


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "webhook", help="manage Event Webhook endpoints and replays"
    )
    sub = parser.add_subparsers(dest="webhook_command", metavar="ACTION")
    sub.required = True

    add = sub.add_parser("add", help="add an endpoint; prints its id and secret")
    add.add_argument("url")
    add.add_argument(
        "--kind", action="append", choices=events.KINDS,
        help="an event kind to post; repeat for more (default: all)",
    )
    add.set_defaults(func=_add)

    lst = sub.add_parser("list", help="list endpoints")
    lst.add_argument("--secrets", action="store_true", help="show signing secrets")
    lst.set_defaults(func=_list)

    remove = sub.add_parser("remove", help="delete an endpoint")
    remove.add_argument("id", type=int)
    remove.set_defaults(func=_remove)

    replay = sub.add_parser("replay", help="post a time range's events again")
    replay.add_argument("--from", dest="start", required=True, type=parse_time)
    replay.add_argument("--to", dest="end", required=True, type=parse_time)
    replay.add_argument("--id", type=int, help="one endpoint (default: all enabled)")
    replay.set_defaults(func=_replay)


def parse_time(text: str) -> float:
    """Epoch seconds, or ISO 8601 (UTC unless it names a zone)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time: {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def _with_db(args: argparse.Namespace, work: Callable[[sa.Connection], Any]) -> Any:
    engine = db.create_engine(load_config(args).database_url)
    try:
        with engine.begin() as conn:
            return work(conn)
    finally:
        engine.dispose()


def _add(args: argparse.Namespace) -> int:
    try:
        made = _with_db(
            args, lambda c: endpoints.create(c, args.url, kinds=args.kind)
        )
    except ValueError as e:
        raise UserError(str(e)) from None
    print(f"{made.id} {made.secret}")
    return 0


def _list(args: argparse.Namespace) -> int:
    for e in _with_db(args, endpoints.list_all):
        kinds = ",".join(e.kinds) if e.kinds is not None else "all"
        state = "enabled" if e.enabled else "disabled"
        line = f"{e.id}  {state}  {kinds}  failures={e.failures}  {e.url}"
        if args.secrets:
            line += f"  secret={e.secret}"
        print(line)
    return 0


def _remove(args: argparse.Namespace) -> int:
    if not _with_db(args, lambda c: endpoints.delete(c, args.id)):
        raise UserError(f"no webhook with id {args.id}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    try:
        made = _with_db(
            args,
            lambda c: endpoints.replay(c, args.start, args.end, webhook_id=args.id),
        )
    except ValueError as e:
        raise UserError(str(e)) from None
    if not made:
        raise UserError("no such webhook" if args.id else "no enabled webhook")
    print(f"replays queued: {', '.join(str(i) for i in made)}")
    return 0
