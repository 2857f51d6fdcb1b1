"""``postroom queue``: list, show, flush, hold, release, bounce, delete
and summarize queued messages.

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
from postroom.errors import NotFound, SpoolError
from postroom.queue.envelope import Envelope, Recipient
from postroom.queue.store import (
    AGE_BUCKETS,
    Attempt,
    Filter,
    MessageInfo,
    QueueStore,
    RecipientInfo,
)
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
        "them: the given IDs (either every ID exists or nothing is "
        "removed), those matching the filters, or --all.",
    )
    p.add_argument("queue_ids", metavar="ID", nargs="*")
    p.add_argument("--all", action="store_true", help="remove every queued message")
    _filter_arguments(p)
    p.set_defaults(func=functools.partial(delete, p))

    p = actions.add_parser(
        "flush",
        help="attempt delivery of waiting messages now (like postqueue -f)",
        description="Make deferred and waiting recipients due now: all of "
        "them, those of the given IDs, or those at --domain. The running "
        "server starts on them within a second.",
    )
    p.add_argument("queue_ids", metavar="ID", nargs="*")
    p.add_argument("--domain", help="only recipients at this domain")
    p.set_defaults(func=flush)

    for name, verb, text in (
        ("hold", "hold", "keep messages out of delivery until released"),
        ("release", "release", "return held messages to delivery"),
        ("bounce", "bounce", "return messages to their senders with a notice"),
    ):
        p = actions.add_parser(
            name,
            help=text,
            description=text[0].upper() + text[1:] + ": the given IDs or those "
            "matching the filters.",
        )
        p.add_argument("queue_ids", metavar="ID", nargs="*")
        _filter_arguments(p)
        p.set_defaults(func=functools.partial(manage, p, verb))

    p = actions.add_parser(
        "summary",
        help="waiting recipients per domain and age (like qshape)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=summary)


def _filter_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--from",
        dest="sender",
        metavar="ADDRESS",
        help="only messages from this sender (<> for bounces)",
    )
    p.add_argument(
        "--to",
        dest="recipient",
        metavar="ADDRESS",
        help="only messages to this recipient",
    )
    p.add_argument("--domain", help="only messages with a recipient at DOMAIN")
    p.add_argument(
        "--state",
        choices=("queued", "held", "deferred"),
        help="only messages in this state",
    )


def _filter(args: argparse.Namespace) -> Filter:
    sender = args.sender
    if sender is not None:
        sender = "" if sender == "<>" else sender.strip("<>")
    return Filter(
        sender=sender,
        recipient=args.recipient.strip("<>") if args.recipient else None,
        domain=args.domain,
        state=args.state,
    )


def _targets(
    parser: argparse.ArgumentParser, args: argparse.Namespace, store: QueueStore
) -> list[str]:
    which = _filter(args)
    if bool(args.queue_ids) == (not which.empty()):
        parser.error("give queue ids or filters (not both)")
    return args.queue_ids or store.select(which)


def manage(parser: argparse.ArgumentParser, verb: str, args: argparse.Namespace) -> int:
    store = _open_store(args)
    if store is None:
        if args.queue_ids:
            raise NotFound(f"no message with queue id {args.queue_ids[0]}")
        print(f"{verb.capitalize()}: the queue is empty")
        return 0
    ids = _targets(parser, args, store)
    if verb == "hold":
        count = store.hold(ids)
        print(f"Held {_plural(count, 'message')}")
    elif verb == "release":
        count = store.release(ids)
        print(f"Released {_plural(count, 'message')}")
    else:
        count = store.bounce(ids)
        print(
            f"Bouncing {_plural(count, 'recipient')} of "
            f"{_plural(len(ids), 'message')}; the senders get a notice"
        )
    return 0


def flush(args: argparse.Namespace) -> int:
    store = _open_store(args)
    if store is None:
        if args.queue_ids:
            raise NotFound(f"no message with queue id {args.queue_ids[0]}")
        count = 0
    else:
        count = store.flush(args.queue_ids or None, domain=args.domain)
    print(f"Flushed: {_plural(count, 'recipient')} due now")
    return 0


def summary(args: argparse.Namespace) -> int:
    store = _open_store(args)
    table = (
        store.summary(time.time()) if store else {"TOTAL": [0] * (len(AGE_BUCKETS) + 2)}
    )
    if args.json:
        heads = ["total", *(f"<{m}m" for m in AGE_BUCKETS), f"{AGE_BUCKETS[-1]}m+"]
        json.dump(
            {d: dict(zip(heads, c, strict=True)) for d, c in table.items()},
            sys.stdout,
            indent=2,
        )
        sys.stdout.write("\n")
        return 0
    order = [
        "TOTAL",
        *sorted((d for d in table if d != "TOTAL"), key=lambda d: (-table[d][0], d)),
    ]
    width = max(len(d) for d in order) + 1
    heads = ["T", *(str(m) for m in AGE_BUCKETS), f"{AGE_BUCKETS[-1]}+"]
    print(f"{'':>{width}} " + " ".join(f"{h:>5}" for h in heads))
    for domain in order:
        print(f"{domain:>{width}} " + " ".join(f"{n:>5}" for n in table[domain]))
    print("(waiting recipients per destination domain; columns are ages in minutes)")
    return 0


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' if count != 1 else ''}"


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
            print(f"{'':<{width + 30}} {rcpt.address} ({_state_text(rcpt)})")
        print()
    kbytes = (sum(i.size for i in infos) + 1023) // 1024
    count = len(infos)
    print(f"-- {kbytes} Kbytes in {count} Request{'s' if count != 1 else ''}.")
    return 0


def _state_text(rcpt: Recipient) -> str:
    """A recipient's state for the listing; a deferred one says why and
    when it is next tried, as mailq prints the reason in parentheses."""
    if not isinstance(rcpt, RecipientInfo) or rcpt.state not in (
        "deferred",
        "bounced",
        "delivered",
    ):
        return rcpt.state
    text = rcpt.state
    if rcpt.last_reply:
        text += f": {rcpt.last_reply}"
    if rcpt.state == "deferred":
        text += f"; next try {_iso(rcpt.next_attempt)}"
    return text


def show(args: argparse.Namespace) -> int:
    store = _open_store(args)
    if store is None:
        raise NotFound(f"no message with queue id {args.queue_id}")
    envelope, info = store.get(args.queue_id, include_removed=True)
    attempts = store.attempts(args.queue_id)
    if info.state == "removed" and not attempts:
        # Deleted before any delivery: nothing left to tell.
        raise NotFound(f"no message with queue id {args.queue_id}")
    try:
        content: bytes | None = store.read_record_of(info)
    except SpoolError:
        if info.state != "removed":
            raise
        content = None  # delivered and collected: the story stays

    for line in _envelope_lines(envelope, info):
        print(line)
    for attempt in attempts:
        print(_attempt_line(envelope, attempt))
    print()
    if content is None:
        print("(the message's content is no longer on disk)")
        return 0
    text = content if args.body else _headers(content)
    sys.stdout.flush()
    # The content is bytes in whatever charset the sender used; pass it
    # through rather than guess. CRLF is the wire form, not for reading.
    sys.stdout.buffer.write(text.replace(b"\r\n", b"\n"))
    sys.stdout.buffer.flush()
    return 0


def delete(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    which = _filter(args)
    if args.all + bool(args.queue_ids) + (not which.empty()) != 1:
        parser.error("give queue ids, filters or --all (one of them)")
    store = _open_store(args)
    if store is None:
        if args.queue_ids:
            raise NotFound(f"no message with queue id {args.queue_ids[0]}")
        count = 0
    elif args.all:
        count = store.delete_all()
    elif args.queue_ids:
        count = store.delete(args.queue_ids)
    else:
        count = store.delete(store.select(which))
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
    lines += [f"Recipient: {_rcpt_text(r)}" for r in info.recipients]
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
    if envelope.auth_results:
        # Inbound SPF/DKIM/DMARC verdict (postroom/mailauth/inbound.py).
        verdict = " ".join(f"{k}={v}" for k, v in envelope.auth_results.items())
        lines.append(f"Authentication: {verdict}")
    return lines


def _attempt_line(envelope: Envelope, attempt: Attempt) -> str:
    address = (
        envelope.recipients[attempt.idx].address
        if attempt.idx < len(envelope.recipients)
        else f"#{attempt.idx}"
    )
    relay = "none"
    if attempt.remote_host:
        relay = f"{attempt.remote_host}[{attempt.remote_ip}]:{attempt.remote_port}"
    reply = " ".join(f"{attempt.code} {attempt.enhanced} {attempt.reply}".split())
    parts = [
        f"Attempt: {_iso(attempt.started_at)} <{address}> #{attempt.attempt}",
        attempt.status,
        f"relay={relay}",
        f"duration={attempt.duration:.3f}s",
    ]
    if attempt.tls:
        parts.append(f"tls={attempt.tls.replace(' ', '/')}")
    if attempt.failure:
        parts.append(f"class={attempt.failure}")
    parts.append(f"reply=({reply})")
    return " ".join(parts)


def _rcpt_text(rcpt: Recipient) -> str:
    parts = [f"<{rcpt.address}>"]
    if rcpt.notify is not None:
        parts.append(f"NOTIFY={','.join(rcpt.notify) or 'NEVER'}")
    if rcpt.orcpt:
        parts.append(f"ORCPT={rcpt.orcpt}")
    parts.append(f"({_state_text(rcpt)})")
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
                "attempts": getattr(r, "attempts", 0),
                "last_reply": getattr(r, "last_reply", None),
                "next_attempt": _iso(r.next_attempt)
                if r.state == "deferred" and isinstance(r, RecipientInfo)
                else None,
            }
            for r in info.recipients
        ],
    }


def _iso(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.isoformat(timespec="seconds")
