"""Mailbox benchmark: download every one of 10,000 messages over POP3 and
IMAP, Postroom against a private Dovecot, in one run (issue 4).

Both servers hold the same mail: ``--users`` mailboxes (4) sharing
``--messages`` messages (10,000), 2 to 12 KB each, written into each
server's store before it is read (into Dovecot's Maildirs directly;
into Postroom's through its mailbox API). One client session per
mailbox runs at the same time, so a POP3 mailbox lock never gets in the
way and both cores are used. The modes are those of ``bench/fetchers``:
``pop3``, ``imap-each`` (one FETCH per message), ``imap-bulk`` (one
FETCH for the whole mailbox).

Each server gets one unmeasured pass per mode first (Dovecot builds its
index and cache then, Postroom its UID index), then ``--repeat`` rounds
in alternating order; the result is the median. Plain-text logins
without TLS on both sides: the servers are measured doing the same work.
The clock starts once every session has logged in: the servers store
passwords differently (Postroom scrypt, the bench's Dovecot plain text),
and a login is not a download.
The issue's target: Postroom at least the messages/s of Dovecot.

Run: ``python -m bench.mailbox [--quick] [--servers postroom,dovecot]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.fetchers import MODES, Fetched
from postroom.testing import dovecot, peers

OUT = Path(__file__).resolve().parent / "out"
PASSWORD = "bench-password"
TARGET = 1.0


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def make_messages(count: int, seed: int = 4) -> list[bytes]:
    """*count* plain messages of 2-12 KB with CRLF line ends."""
    rng = random.Random(seed)
    messages = []
    for n in range(count):
        lines = [
            f"From: Sender {n % 97} <sender{n % 97}@bench.test>",
            f"To: <reader{n % 4}@bench.test>",
            f"Subject: Benchmark message {n}",
            "Date: Fri, 04 Dec 2026 10:00:00 +0000",
            f"Message-ID: <bench-{n}@bench.test>",
            "MIME-Version: 1.0",
            "Content-Type: text/plain; charset=us-ascii",
            "",
        ]
        for _ in range(rng.randint(30, 180)):
            lines.append(rng.randbytes(30).hex())
        messages.append(("\r\n".join(lines) + "\r\n").encode())
    return messages


@dataclass
class Server:
    name: str
    ports: dict[str, int]  # "pop3" / "imap" -> port
    users: list[str]  # login names
    stop: Callable[[], None]


def start_dovecot(work: Path, mail: dict[str, list[bytes]]) -> Server:
    root = work / "dovecot"
    root.mkdir(parents=True)
    instance = dovecot.start_dovecot(root, {user: PASSWORD for user in mail})
    for user, messages in mail.items():
        new = instance.maildir(user) / "new"
        for n, data in enumerate(messages):
            name = f"{1764000000 + n}.M{n}P1.bench.test,S={len(data)}"
            (new / name).write_bytes(data)
        dovecot.chown_tree(instance.maildir(user))
    return Server("dovecot", {"pop3": instance.pop3_port, "imap": instance.imap_port},
                  list(mail), instance.stop)


POSTROOM_CONFIG = """\
data_dir = "{data_dir}"
hostname = "bench.test"

[smtp]
listeners = [{{kind = "relay", address = "127.0.0.1:{smtp_port}"}}]
local_domains = ["bench.test"]

[delivery]
enabled = false

[pop3]
listeners = [{{kind = "pop3", address = "127.0.0.1:{pop3_port}"}}]
allow_plaintext_auth = true

[imap]
listeners = [{{kind = "imap", address = "127.0.0.1:{imap_port}"}}]
allow_plaintext_auth = true
"""


def start_postroom(work: Path, mail: dict[str, list[bytes]]) -> Server:
    root = work / "postroom"
    root.mkdir(parents=True)
    ports = {"smtp": peers.free_port(), "pop3": peers.free_port(),
             "imap": peers.free_port()}
    config = root / "postroom.toml"
    config.write_text(POSTROOM_CONFIG.format(
        data_dir=root / "data", smtp_port=ports["smtp"],
        pop3_port=ports["pop3"], imap_port=ports["imap"]))
    postroom = [sys.executable, "-m", "postroom", "-c", str(config)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM_")}
    logins = []
    for user in mail:
        address = f"{user}@bench.test"
        subprocess.run([*postroom, "user", "add", address, "--password-stdin"],
                       input=PASSWORD + "\n", text=True, check=True, env=env)
        logins.append(address)
    fill_postroom(config, mail)
    daemon = peers.start_daemon("postroom", [*postroom, "serve"], env=env, cwd=root,
                                log_path=root / "postroom.log", lifetime=1800.0)
    dovecot.wait_for_greeting(ports["pop3"], b"+OK", 60.0, daemon)
    dovecot.wait_for_greeting(ports["imap"], b"* OK", 60.0, daemon)
    return Server("postroom", ports, logins, daemon.stop)


def fill_postroom(config_path: Path, mail: dict[str, list[bytes]]) -> None:
    """Store the mail through Postroom's mailbox API, as local delivery
    would, dated like Dovecot's copies."""
    from postroom import config as config_mod
    from postroom.mailbox.store import MailStore

    config = config_mod.load(config_path, environ={})
    # A bench fill, not mail anyone could lose: no fsync per message.
    store = MailStore(config.mailbox_dir, fsync=False)
    for user, messages in mail.items():
        inbox = store.open(f"{user}@bench.test")
        for n, data in enumerate(messages):
            inbox.append(data, internaldate=1764000000.0 + n)


async def _run(mode: str, server: Server) -> tuple[float, list[Fetched]]:
    fetch = MODES[mode]
    port = server.ports["pop3" if mode == "pop3" else "imap"]
    # The clock starts once every session has logged in (the barrier's
    # last arrival), so password hashing is left out.
    start = asyncio.Barrier(len(server.users) + 1)
    runs = asyncio.gather(
        *(fetch(port, user, PASSWORD, start) for user in server.users))
    await start.wait()
    started = time.perf_counter()
    results = await runs
    return time.perf_counter() - started, list(results)


def run_once(mode: str, server: Server, expected: int) -> float:
    seconds, results = asyncio.run(_run(mode, server))
    got = sum(r.messages for r in results)
    if got != expected:
        raise RuntimeError(f"{server.name} {mode}: {got} of {expected} messages")
    return got / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--servers", default="postroom,dovecot")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--quick", action="store_true",
                        help="2,000 messages, 1 round")
    args = parser.parse_args(argv)
    if args.quick:
        args.messages, args.repeat = 2000, 1
    names = args.servers.split(",")
    modes = args.modes.split(",")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    messages = make_messages(args.messages)
    mail = {f"reader{u}": messages[u :: args.users] for u in range(args.users)}
    work = peers.make_root(prefix="postroom-bench-mailbox-")
    servers: dict[str, Server] = {}
    rates: dict[str, dict[str, list[float]]] = {
        mode: {name: [] for name in names} for mode in modes}
    try:
        starters = {"postroom": start_postroom, "dovecot": start_dovecot}
        for name in names:
            progress(f"[{name}] storing {args.messages:,} messages")
            servers[name] = starters[name](work, mail)
        for mode in modes:
            for name in names:
                progress(f"[{name}] {mode} warm-up")
                run_once(mode, servers[name], args.messages)
            for round_no in range(args.repeat):
                order = names if round_no % 2 == 0 else names[::-1]
                for name in order:
                    rate = run_once(mode, servers[name], args.messages)
                    rates[mode][name].append(rate)
                    progress(f"[{name}] {mode} round {round_no + 1}: {rate:,.0f} msg/s")
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nMailbox download, {args.messages:,} messages in {args.users} "
          f"mailboxes, one session each, median of {args.repeat}:")
    print(f"  {'mode':<10} {'server':<9} {'msg/s':>8}  runs")
    medians: dict[str, dict[str, float]] = {}
    for mode in modes:
        medians[mode] = {n: statistics.median(r) for n, r in rates[mode].items()}
        for name in names:
            runs = ", ".join(f"{r:,.0f}" for r in rates[mode][name])
            print(f"  {mode:<10} {name:<9} {medians[mode][name]:>8,.0f}  {runs}")
    if {"postroom", "dovecot"} <= set(names):
        for mode in modes:
            ratio = medians[mode]["postroom"] / medians[mode]["dovecot"]
            verdict = "PASS" if ratio >= TARGET else "FAIL"
            print(f"{verdict} {mode}: Postroom {ratio:.2f}x Dovecot "
                  f"(target {TARGET:g}x)")
    OUT.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (OUT / f"mailbox-{stamp}.json").write_text(json.dumps(
        {"messages": args.messages, "users": args.users, "rates": rates,
         "medians": medians}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
