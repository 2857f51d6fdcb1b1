"""The SMTP servers a benchmark measures, started alike on loopback.

Each starter takes a fresh work directory and returns a running
``Server``: its port, its processes (for memory readings) and a way to
stop it. Every server listens on 127.0.0.1 on a port picked here, runs
in a process group of its own and ends by itself after ``lifetime``
seconds should the benchmark die without stopping it (see
``postroom.testing.peers``).

Servers
-------
postroom  ``postroom -c FILE serve``, durable queue (fsync on), otherwise
          default settings.
postfix   A private Postfix that accepts and holds every message: queued
          and fsync'd like any other, never delivered (bench/README.md
          says why this is "Postfix, acceptance only").
aiosmtpd  aiosmtpd on uvloop with a handler that writes and fsyncs one
          file per message before its 250 (bench/aiosmtpd_durable.py).

Later benchmarks (relay, mailbox) add their starters here.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from postroom.testing import peers

# Where `python -m bench...` resolves: the repository root.
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Server:
    """A running server under test."""

    name: str
    port: int
    daemon: peers.Daemon
    description: str

    def pids(self) -> list[int]:
        """The server's processes (children included, wrappers not)."""
        return self.daemon.pids()

    def stop(self) -> None:
        self.daemon.stop()


@dataclass(frozen=True)
class Options:
    """What the starters need besides a work directory."""

    lifetime: float = 1800.0
    # Connections the server must be able to hold at once (the idle
    # connection probe); Postfix needs one smtpd process for each.
    max_connections: int = 1000


POSTROOM_CONFIG = """\
data_dir = "{data_dir}"
hostname = "{hostname}"

[smtp]
listeners = [{{kind = "relay", address = "{address}"}}]
max_connections = {max_connections}
max_connections_per_ip = {max_connections_per_ip}
trusted_networks = ["127.0.0.0/8"]
# Stopping is not measured; do not wait 30 s for it.
shutdown_grace = 5.0

[queue]
fsync = true

[delivery]
# Acceptance only, as Postfix holds what it accepts: nothing here may
# look up the bench's domains or connect anywhere.
enabled = false
"""


def start_postroom(work: Path, options: Options) -> Server:
    """``postroom serve`` with a durable queue under WORK/data."""
    work.mkdir(parents=True, exist_ok=True)
    port = peers.free_port()
    config = work / "postroom.toml"
    config.write_text(POSTROOM_CONFIG.format(
        data_dir=work / "data", hostname=peers.HOSTNAME,
        address=f"{peers.LOOPBACK}:{port}",
        max_connections=max(5000, 2 * options.max_connections),
        max_connections_per_ip=max(2000, 2 * options.max_connections)))

    # POSTROOM_* variables would override the file; the bench must
    # measure the settings it shows.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("POSTROOM_")}
    argv = [sys.executable, "-m", "postroom", "-c", str(config), "serve"]
    daemon = peers.start_daemon("postroom", argv, env=env, cwd=work,
                                log_path=work / "postroom.log",
                                lifetime=options.lifetime)
    return _ready(Server("postroom", port, daemon,
                         "Postroom, durable queue (fsync)"))


def start_postfix(work: Path, options: Options) -> Server:
    """A private Postfix that holds everything it accepts."""
    instance = peers.start_postfix(
        work, peers.free_port(), lifetime=options.lifetime,
        smtpd_process_limit=options.max_connections + 50)
    return Server("postfix", instance.port, instance.daemon,
                  f"Postfix {peers.postfix_version()}, acceptance only "
                  f"(hold queue)")


def start_aiosmtpd(work: Path, options: Options) -> Server:
    """aiosmtpd + uvloop, one fsync'd file per message."""
    work.mkdir(parents=True, exist_ok=True)
    port = peers.free_port()
    argv = [sys.executable, "-m", "bench.aiosmtpd_durable",
            "--port", str(port), "--spool", str(work / "spool")]
    daemon = peers.start_daemon("aiosmtpd", argv, cwd=REPO,
                                log_path=work / "aiosmtpd.log",
                                lifetime=options.lifetime)
    return _ready(Server("aiosmtpd", port, daemon,
                         "aiosmtpd + uvloop, fsync per message"))


def _ready(server: Server) -> Server:
    try:
        peers.wait_for_banner(server.port, timeout=60.0,
                              daemon=server.daemon)
    except peers.PeerError:
        server.stop()
        raise
    return server


Starter = Callable[[Path, Options], Server]

STARTERS: dict[str, Starter] = {
    "postroom": start_postroom,
    "postfix": start_postfix,
    "aiosmtpd": start_aiosmtpd,
}
