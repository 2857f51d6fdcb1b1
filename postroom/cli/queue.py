"""``postroom queue``: list, show and delete queued messages.

Safe while the server runs: everything goes through ``QueueStore``,
which reads the WAL-mode database and preads spool records without
taking any spool's lock. ``delete`` only marks messages removed; the
server's garbage collector reclaims their disk space later. The queue
shown is that of every spool (one per server worker); ``show`` names
the spool that holds the message.

The listing follows Postfix's mailq, which administrators already read
at a glance: one block per message, the sender beside the id and each
recipient below it with its state.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from postroom.cli import common
from postroom.errors import NotFound
from postroom.queue.envelope import Envelope, Recipient
from postroom.queue.store import MessageInfo, QueueStore
from postroom.store import db


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "queue",
        help="list, show and delete queued messages",
        description="Inspect and manage the mail queue. Safe to use while "
        "the server runs.",
    )
    actions = parser.add_subparsers(dest="queue_action", metavar="ACTION")
    actions.required = True

    p = actions.add_parser("list", help="list queued messages (like mailq)")
    p.add_argument(
        "--json", action="store_true", help="print a JSON array instead of the table"
    )
    p.set_defaults(func=list_queue)

    p = actions.add_parser("show", help="print a message's envelope and headers")
    p.add_argument("queue_id", metavar="ID")
    p.add_argument(
        "--body",
        action="store_true",
        help="print the whole message, not only its headers",
    )
    p.set_defaults(func=show)

    p = actions.add_parser(
        "delete",
        help="remove messages from the queue",
        description="Remove messages from the queue without delivering "
        "them. Either every ID exists or nothing is removed.",
    )
    p.add_argument("queue_ids", metavar="ID", nargs="*")
    p.add_argument("--all", action="store_true", help="remove every queued message")
    p.set_defaults(func=functools.partial(delete, p))


def list_queue(args: argparse.Namespace) -> int:
    store = _open_store(args)
    infos = store.list_messages() if store else []
    if args.json:
        json.dump([_info_json(i) for i in infos], sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if not infos:
        print("Mail queue is empty")
        return 0

    width = max(len(i.queue_id) for i in infos) + 1  # id and the "!" mark
    print(
        f"{'-Queue ID-':<{width}} {'--Size--':>8} {'----Arrival Time----':<20}"
        " -Sender/Recipient-------"
    )
    for info in infos:
        # "!" marks a held message, as in Postfix's mailq.
        mark = "!" if info.state == "held" else " "
        arrival = time.strftime("%a %b %d %H:%M:%S", time.localtime(info.received_at))
        print(
            f"{info.queue_id}{mark} {info.size:>8} {arrival:<20} {info.sender or '<>'}"
        )
        for rcpt in info.recipients:
            print(f"{'':<{width + 30}} {rcpt.address} ({rcpt.state})")
        print()
    kbytes = (sum(i.size for i in infos) + 1023) // 1024
    count = len(infos)
    print(f"-- {kbytes} Kbytes in {count} Request{'s' if count != 1 else ''}.")
    return 0


def show(args: argparse.Namespace) -> int:
    store = _open_store(args)
    if store is None:
        raise NotFound(f"no message with queue id {args.queue_id}")
    envelope, info = store.get(args.queue_id)
    content = store.read_content(args.queue_id)

    for line in _envelope_lines(envelope, info):
        print(line)
    print()
    text = content if args.body else _headers(content)
    sys.stdout.flush()
    # The content is bytes in whatever charset the sender used; pass it
    # through rather than guess. CRLF is the wire form, not for reading.
    sys.stdout.buffer.write(text.replace(b"\r\n", b"\n"))
    sys.stdout.buffer.flush()
    return 0


def delete(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.all == bool(args.queue_ids):
        parser.error("give queue ids or --all (not both)")
    store = _open_store(args)
    if store is None:
        if args.queue_ids:
            raise NotFound(f"no message with queue id {args.queue_ids[0]}")
        count = 0
    elif args.all:
        count = store.delete_all()
    else:
        count = store.delete(args.queue_ids)
    print(f"Deleted {count} message{'s' if count != 1 else ''}")
    return 0


def _open_store(args: argparse.Namespace) -> QueueStore | None:
    """The queue of the configured node, or None if it has none yet.

    Creating an empty database (and its directory) just to report an
    empty queue would leave files wherever the command was run.
    """
    config = common.load_config(args)
    url = sa.engine.make_url(config.database_url)
    if (
        url.get_backend_name() == "sqlite"
        and url.database
        and url.database != ":memory:"
        and not Path(url.database).exists()
    ):
        return None
    return QueueStore(db.create_engine(config.database_url), config.spool_path)


def _envelope_lines(envelope: Envelope, info: MessageInfo) -> list[str]:
    # The MAIL FROM parameters as the client gave them (RFC 1652, 3461,
    # 6531, 8689), so they read like the SMTP transaction.
    params = []
    if envelope.body:
        params.append(f"BODY={envelope.body}")
    if envelope.declared_size is not None:
        params.append(f"SIZE={envelope.declared_size}")
    if envelope.ret:
        params.append(f"RET={envelope.ret}")
    if envelope.envid:
        params.append(f"ENVID={envelope.envid}")
    if envelope.smtputf8:
        params.append("SMTPUTF8")
    if envelope.requiretls:
        params.append("REQUIRETLS")

    lines = [
        f"Queue-ID: {info.queue_id}",
        f"State: {info.state}",
        f"Arrival: {_iso(info.received_at)}",
        f"Size: {info.size}",
        f"Spool: {info.spool}",
        " ".join([f"Sender: <{envelope.sender}>", *params]),
    ]
    lines += [f"Recipient: {_rcpt_text(r)}" for r in envelope.recipients]
    client = envelope.client_address
    if envelope.client_helo:
        client += f" helo={envelope.client_helo}"
    if client:
        lines.append(f"Client: {client.strip()}")
    for label, value in (
        ("Listener", envelope.listener),
        ("TLS", envelope.tls),
        ("Auth", envelope.auth_user),
    ):
        if value:
            lines.append(f"{label}: {value}")
    return lines


def _rcpt_text(rcpt: Recipient) -> str:
    parts = [f"<{rcpt.address}>"]
    if rcpt.notify is not None:
        parts.append(f"NOTIFY={','.join(rcpt.notify) or 'NEVER'}")
    if rcpt.orcpt:
        parts.append(f"ORCPT={rcpt.orcpt}")
    parts.append(f"({rcpt.state})")
    return " ".join(parts)


def _headers(content: bytes) -> bytes:
    """The header section, up to and including the empty line."""
    for separator in (b"\r\n\r\n", b"\n\n"):
        end = content.find(separator)
        if end >= 0:
            return content[: end + len(separator)]
    return content


def _info_json(info: MessageInfo) -> dict[str, Any]:
    return {
        "queue_id": info.queue_id,
        "state": info.state,
        "size": info.size,
        "received_at": _iso(info.received_at),
        "sender": info.sender,
        "recipients": [
            {
                "address": r.address,
                "state": r.state,
                "notify": None if r.notify is None else list(r.notify),
                "orcpt": r.orcpt,
            }
            for r in info.recipients
        ],
    }


def _iso(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.isoformat(timespec="seconds")
