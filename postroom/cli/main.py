"""Entry point of the ``postroom`` command.

Each command group lives in its own module with a ``register(subparsers)``
function that adds its parser and sets ``func`` on it; ``func(args)``
returns the exit status. Errors the user can fix (a bad setting, an
unknown queue id) are ``PostroomError``s: they are printed as one line,
``postroom: <what went wrong>``, with exit status 1. Anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import sqlalchemy

from postroom import __version__
from postroom.cli import (
    alias,
    apikey,
    contacts,
    dkim,
    lists,
    queue,
    send,
    serve,
    suppress,
    template,
    user,
    webhook,
)
from postroom.errors import PostroomError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="postroom", description="Postroom mail platform: server, queue and tools."
    )
    parser.add_argument(
        "--version", action="version", version=f"postroom {__version__}"
    )
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        default=os.environ.get("POSTROOM_CONFIG"),
        help="configuration file (default: $POSTROOM_CONFIG, else "
        "./postroom.toml if present, else built-in defaults)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in (serve, send, queue, user, alias, dkim, template, apikey,
                   contacts, lists, webhook, suppress):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.func(args)
    except PostroomError as e:
        print(f"postroom: {e}", file=sys.stderr)
        return 1
    except sqlalchemy.exc.SQLAlchemyError as e:
        # The driver's own words, without SQLAlchemy's statement dump.
        cause = getattr(e, "orig", None) or e
        print(f"postroom: database: {cause}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return status
