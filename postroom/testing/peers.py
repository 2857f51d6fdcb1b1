"""Real mail peers on loopback, started the same way by tests and benches.

Postfix's own programs are our yardstick: a private Postfix instance to
compare against, ``smtp-source`` to drive load and ``smtp-sink`` to take
relayed mail. They run on shared machines, next to other people's
Postfix processes, so every helper here keeps three rules:

- Every socket is on 127.0.0.1 and nothing resolves a name: Postfix and
  smtp-source get an explicit hostname (``bench.test``) so neither falls
  back to the machine's, and Postfix is told to use no DNS at all.
- Every process started here stops by itself: Postfix's master runs with
  ``-e lifetime``, the other programs under coreutils ``timeout``, and a
  load is bounded by its message count.
- Every process runs in a process group of its own and is stopped by the
  PIDs in that group, never by program name.

The private Postfix instance
----------------------------
``start_postfix`` writes a ``main.cf`` and ``master.cf`` into
``ROOT/etc`` that point ``queue_directory`` and ``data_directory`` at
``ROOT/queue`` and ``ROOT/data``, runs ``postfix -c ROOT/etc check`` to
create the queue tree with the owners Postfix wants, then starts
``master`` itself in a new session. Starting master directly (instead of
``postfix start``) gives us its PID; the new session matters because
master signals its whole process group when it stops.

Master must run as root; its daemons run as ``mail_owner = postfix``,
the account the Debian package creates. Since they work inside the
queue and data directories, ``ROOT`` and every parent must be
searchable by that user. ``mkdtemp`` (and so pytest's ``tmp_path``)
makes 0700 directories; ``make_root`` makes one that is not.

By default the instance only accepts: every message is put on hold
(``check_client_access static:HOLD``), so it is written to the queue,
fsync'd and answered 250 like any other, and then never looked at by
the queue manager. Nothing is delivered and no name is looked up. With
``relay_to=PORT`` mail goes instead to ``[127.0.0.1]:PORT`` (an
smtp-sink, say) through Postfix's smtp client.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"
HOSTNAME = "bench.test"
SENDER = f"sender@{HOSTNAME}"
RECIPIENT = f"rcpt@{HOSTNAME}"

# Postfix's unprivileged account, as the Debian package creates it.
MAIL_OWNER = "postfix"


class PeerError(RuntimeError):
    """A peer program is missing, would not start, or misbehaved."""


# -- ports and banners --------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago.

    The port is only reserved while this function holds it, so another
    process may take it before the caller binds; on a shared machine
    that is rare enough, and a server that cannot bind fails loudly.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_banner(
    port: int, *, timeout: float = 15.0, daemon: Daemon | None = None
) -> str:
    """Poll 127.0.0.1:PORT until a server there sends its 220 greeting.

    Returns the greeting line. Raises ``PeerError`` when ``timeout``
    seconds pass, or at once when ``daemon`` (the process expected to
    listen) has exited; the error carries the tail of its log.
    """
    deadline = time.monotonic() + timeout
    while True:
        if daemon is not None and daemon.process.poll() is not None:
            raise PeerError(
                f"{daemon.name} exited with status "
                f"{daemon.process.returncode}{daemon.log_tail()}"
            )
        try:
            with socket.create_connection((LOOPBACK, port), timeout=2.0) as s:
                line = s.makefile("rb").readline().decode("ascii", "replace")
                if line.startswith("220"):
                    with contextlib.suppress(OSError):
                        s.sendall(b"QUIT\r\n")
                    return line.rstrip("\r\n")
        except OSError:
            pass
        if time.monotonic() > deadline:
            tail = daemon.log_tail() if daemon is not None else ""
            raise PeerError(
                f"no SMTP greeting on {LOOPBACK}:{port} within {timeout:g}s{tail}"
            )
        time.sleep(0.05)


# -- processes ------------------------------------------------------------


def group_pids(pgid: int) -> list[int]:
    """PIDs of the live processes in process group ``pgid``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command name, which may itself hold spaces
        # and parentheses: state, ppid, pgrp, ...
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(entry.name))
    return sorted(pids)


@dataclass
class Daemon:
    """A server process that leads a process group of its own.

    ``wrapped`` says the leader is a coreutils ``timeout`` that bounds
    the server's life; it forwards SIGTERM to the server and is not
    itself part of the server (``pids`` leaves it out).
    """

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    wrapped: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def pids(self) -> list[int]:
        """The server's processes, children included."""
        members = group_pids(self.process.pid)
        if self.wrapped:
            members = [pid for pid in members if pid != self.process.pid]
        return members

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        tail = text.splitlines()[-lines:]
        return "".join(f"\n  | {line}" for line in tail)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM the leader; SIGKILL by PID whatever of the group is
        left after ``timeout`` seconds. Returns the leader's status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)

        # Children may outlive the leader for a moment (Postfix daemons
        # notice master's exit on their next event); give them that.
        deadline = time.monotonic() + 2.0
        while group_pids(self.process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in group_pids(self.process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(5.0)
        return self.process.returncode


def start_daemon(
    name: str,
    argv: Sequence[str],
    *,
    log_path: Path,
    lifetime: float | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Daemon:
    """Start ``argv`` in a new session with stdout and stderr to
    ``log_path``; under ``timeout`` when ``lifetime`` (seconds) is set,
    so that it ends by itself even if the caller dies."""
    wrapped = lifetime is not None
    if lifetime is not None:
        argv = ["timeout", "-k", "5", f"{lifetime:.0f}", *argv]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=None if env is None else dict(env),
            cwd=cwd,
        )
    return Daemon(name, process, log_path, wrapped)


# -- the private Postfix instance ---------------------------------------


# Postfix puts its programs in /usr/sbin, which not every PATH holds.
_SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")
POSTFIX_TOOLS = ("postfix", "postconf", "smtp-source", "smtp-sink")


def tool(name: str) -> str:
    """The full path of program ``name``; ``PeerError`` if missing."""
    search = os.pathsep.join([os.environ.get("PATH", ""), *_SBIN])
    path = shutil.which(name, path=search)
    if path is None:
        raise PeerError(f"{name} is not installed (scripts/install-peers.sh)")
    return path


def postfix_available() -> bool:
    """Whether Postfix's programs are installed (scripts/install-peers.sh)."""
    try:
        for name in POSTFIX_TOOLS:
            tool(name)
    except PeerError:
        return False
    return True


def postfix_version() -> str:
    return _postconf_default("mail_version")


def _postconf_default(name: str) -> str:
    # -d: the compiled-in default, readable without any main.cf.
    out = subprocess.run(
        [tool("postconf"), "-d", "-h", name],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return out.stdout.strip()


@dataclass
class PostfixInstance:
    """A running private Postfix; see the module docstring."""

    root: Path
    port: int
    daemon: Daemon

    @property
    def config_dir(self) -> Path:
        return self.root / "etc"

    @property
    def queue_dir(self) -> Path:
        return self.root / "queue"

    @property
    def log_path(self) -> Path:
        return self.root / "maillog"

    def queued(self, queue: str = "hold") -> int:
        """Number of messages in one of the queues (hold, incoming, ...)."""
        return sum(1 for p in (self.queue_dir / queue).rglob("*") if p.is_file())

    def stop(self) -> None:
        self.daemon.stop()

    def __enter__(self) -> PostfixInstance:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_postfix(
    root: Path,
    port: int,
    *,
    relay_to: int | None = None,
    smtpd_process_limit: int | None = None,
    settings: Mapping[str, str] | None = None,
    lifetime: float = 1800.0,
    ready_timeout: float = 20.0,
) -> PostfixInstance:
    """Start a private Postfix listening on 127.0.0.1:PORT.

    Arguments:
        root: an empty (or absent) directory owned by root; it holds
            config, queue, data and the log file ``maillog``.
        relay_to: relay everything to smtp at 127.0.0.1:relay_to instead
            of holding it.
        smtpd_process_limit: most smtpd processes (one per connection);
            Postfix's default is 100.
        settings: extra ``main.cf`` lines, overriding ours.
        lifetime: master exits by itself after this many seconds.

    Raises ``PeerError`` if Postfix is not installed, we are not root,
    or the instance does not greet within ``ready_timeout`` seconds.
    """
    if not postfix_available():
        raise PeerError("Postfix is not installed (run scripts/install-peers.sh)")
    if os.geteuid() != 0:
        raise PeerError(
            "a private Postfix instance needs root: its "
            "master process must be able to switch users"
        )

    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    _check_searchable(root)
    (root / "etc").mkdir(exist_ok=True)
    (root / "queue").mkdir(exist_ok=True)
    daemon_dir = Path(_postconf_default("daemon_directory"))

    main_cf = _main_cf(root, relay_to)
    main_cf.update(settings or {})
    (root / "etc" / "main.cf").write_text(
        "".join(f"{key} = {value}\n" for key, value in main_cf.items())
    )
    (root / "etc" / "master.cf").write_text(_master_cf(port, smtpd_process_limit))

    # "check" creates the queue directories with the owners and modes
    # Postfix insists on; master refuses to run without them.
    check = subprocess.run(
        [tool("postfix"), "-c", str(root / "etc"), "check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check.returncode != 0:
        raise PeerError(
            f"postfix check failed: {check.stderr.strip()}{_tail(root / 'maillog')}"
        )

    # -s keeps master in the foreground; -e bounds its life.
    argv = [
        str(daemon_dir / "master"),
        "-c",
        str(root / "etc"),
        "-s",
        "-e",
        f"{lifetime:.0f}",
    ]
    daemon = start_daemon("postfix", argv, log_path=root / "master.out")
    instance = PostfixInstance(root, port, daemon)
    try:
        wait_for_banner(port, timeout=ready_timeout, daemon=daemon)
    except PeerError as e:
        daemon.stop()
        raise PeerError(f"{e}{_tail(root / 'maillog')}") from None
    return instance


def make_root(prefix: str = "postroom-peers-") -> Path:
    """A new empty directory in the system temp dir that Postfix's
    unprivileged daemons may enter (mode 0755); the caller removes it."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    return root


def _check_searchable(root: Path) -> None:
    # Without this, master dies at start with EACCES on its data
    # directory and, logging to a syslog that may not exist, says
    # nothing anyone sees.
    for directory in (root, *root.resolve().parents):
        if not directory.stat().st_mode & 0o001:
            raise PeerError(
                f"{directory} is not searchable by others, so Postfix's "
                f"daemons (user {MAIL_OWNER}) cannot reach {root}; "
                f"use peers.make_root()"
            )


def _main_cf(root: Path, relay_to: int | None) -> dict[str, str]:
    settings = {
        "compatibility_level": "3.6",
        "queue_directory": str(root / "queue"),
        "data_directory": str(root / "data"),
        "mail_owner": MAIL_OWNER,
        "setgid_group": "postdrop",
        # Our names, so that Postfix never asks the machine for its own.
        "myhostname": HOSTNAME,
        "mydomain": HOSTNAME,
        "myorigin": HOSTNAME,
        # Nothing is local: every recipient is remote, relayed for
        # clients on loopback (smtpd_relay_restrictions' default
        # permit_mynetworks).
        "mydestination": "",
        "local_recipient_maps": "",
        "alias_maps": "",
        "alias_database": "",
        "relay_domains": "",
        "inet_interfaces": LOOPBACK,
        "inet_protocols": "ipv4",
        "mynetworks": "127.0.0.0/8",
        # No reverse lookup of the client, no DNS for delivery.
        "smtpd_peername_lookup": "no",
        "smtp_dns_support_level": "disabled",
        "biff": "no",
        "maillog_file": str(root / "maillog"),
        "maillog_file_prefixes": str(root),
    }
    if relay_to is None:
        # Acceptance only: queued durably, then held, never delivered.
        settings["smtpd_client_restrictions"] = "check_client_access static:HOLD"
    else:
        settings["relayhost"] = f"[{LOOPBACK}]:{relay_to}"
    return settings


def _master_cf(port: int, smtpd_process_limit: int | None) -> str:
    # The Debian master.cf services minus the pipe(8) examples, with
    # chroot off: a chroot jail under a temp dir would need a copy of
    # /etc files, and it changes nothing we measure.
    limit = "-" if smtpd_process_limit is None else str(smtpd_process_limit)
    services = [
        # service            type   private unpriv chroot wakeup maxproc
        (f"{LOOPBACK}:{port}", "inet", "n", "-", "n", "-", limit, "smtpd"),
        ("pickup", "unix", "n", "-", "n", "60", "1", "pickup"),
        ("cleanup", "unix", "n", "-", "n", "-", "0", "cleanup"),
        ("qmgr", "unix", "n", "-", "n", "300", "1", "qmgr"),
        ("tlsmgr", "unix", "-", "-", "n", "1000?", "1", "tlsmgr"),
        ("rewrite", "unix", "-", "-", "n", "-", "-", "trivial-rewrite"),
        ("bounce", "unix", "-", "-", "n", "-", "0", "bounce"),
        ("defer", "unix", "-", "-", "n", "-", "0", "bounce"),
        ("trace", "unix", "-", "-", "n", "-", "0", "bounce"),
        ("verify", "unix", "-", "-", "n", "-", "1", "verify"),
        ("flush", "unix", "n", "-", "n", "1000?", "0", "flush"),
        ("proxymap", "unix", "-", "-", "n", "-", "-", "proxymap"),
        ("proxywrite", "unix", "-", "-", "n", "-", "1", "proxymap"),
        ("smtp", "unix", "-", "-", "n", "-", "-", "smtp"),
        ("relay", "unix", "-", "-", "n", "-", "-", "smtp"),
        ("showq", "unix", "n", "-", "n", "-", "-", "showq"),
        ("error", "unix", "-", "-", "n", "-", "-", "error"),
        ("retry", "unix", "-", "-", "n", "-", "-", "error"),
        ("discard", "unix", "-", "-", "n", "-", "-", "discard"),
        ("local", "unix", "-", "n", "n", "-", "-", "local"),
        ("virtual", "unix", "-", "n", "n", "-", "-", "virtual"),
        ("lmtp", "unix", "-", "-", "n", "-", "-", "lmtp"),
        ("anvil", "unix", "-", "-", "n", "-", "1", "anvil"),
        ("scache", "unix", "-", "-", "n", "-", "1", "scache"),
        ("postlog", "unix-dgram", "n", "-", "n", "-", "1", "postlogd"),
    ]
    return "".join(" ".join(row) + "\n" for row in services)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "".join(f"\n  | {line}" for line in text.splitlines()[-lines:])


# -- smtp-source ----------------------------------------------------------


@dataclass(frozen=True)
class SourceResult:
    """What one smtp-source run did.

    ``messages`` is smtp-source's own count (``-c``) of DATA commands
    that completed; without ``-A`` it stops at the first reply that is
    not positive, so ``messages`` below the number asked for means
    rejected or failed mail (see ``stderr``).
    """

    messages: int
    seconds: float
    returncode: int
    stderr: str

    @property
    def rate(self) -> float:
        """Messages per second."""
        return self.messages / self.seconds if self.seconds > 0 else 0.0


_COUNT = re.compile(rb"(\d+)\s*$")


def parse_source_count(stdout: bytes) -> int:
    """The last value of smtp-source's running counter.

    ``-c`` prints the count after every DATA, each time preceded by a
    carriage return (``\\r1\\r2...\\r2000\\r\\n``); no output means 0.
    """
    match = _COUNT.search(stdout.replace(b"\r", b"\n").rstrip())
    return int(match.group(1)) if match else 0


def run_smtp_source(
    port: int,
    *,
    messages: int,
    sessions: int = 1,
    size: int = 1024,
    reuse_connection: bool = True,
    timeout: float = 300.0,
    extra_args: Sequence[str] = (),
) -> SourceResult:
    """Send ``messages`` messages of ``size`` body bytes with smtp-source.

    ``sessions`` run in parallel (``-s``); with ``reuse_connection``
    (``-d``) each keeps its connection for all its messages (about
    messages/sessions each), else every message has a connection of its
    own. Sender, recipient and HELO name are fixed and ASCII, and the
    generated body is ASCII too. The wall time includes smtp-source's
    start (a millisecond or two). It is killed after ``timeout`` s.
    """
    argv = [
        "timeout",
        "-k",
        "2",
        f"{timeout:.0f}",
        tool("smtp-source"),
        "-c",
        "-s",
        str(sessions),
        "-m",
        str(messages),
        "-l",
        str(size),
        "-M",
        HOSTNAME,
        "-f",
        SENDER,
        "-t",
        RECIPIENT,
        *extra_args,
    ]
    if reuse_connection:
        argv.append("-d")
    argv.append(f"{LOOPBACK}:{port}")

    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, timeout=timeout + 10)
    seconds = time.perf_counter() - started
    return SourceResult(
        parse_source_count(done.stdout),
        seconds,
        done.returncode,
        done.stderr.decode("utf-8", "replace").strip(),
    )


# -- smtp-sink ------------------------------------------------------------


@dataclass
class SmtpSink:
    """A running smtp-sink: answers 250 to everything and discards it."""

    port: int
    daemon: Daemon

    def messages(self) -> int:
        """Messages received so far, from smtp-sink's ``-c`` counters
        (printed when a session ends, so read this after the senders
        have disconnected)."""
        found = re.findall(rb"mesg=(\d+)", self.daemon.log_path.read_bytes())
        return int(found[-1]) if found else 0

    def stop(self) -> None:
        self.daemon.stop()

    def __enter__(self) -> SmtpSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_smtp_sink(
    root: Path,
    port: int,
    *,
    backlog: int = 256,
    lifetime: float = 1800.0,
    extra_args: Sequence[str] = (),
) -> SmtpSink:
    """Start smtp-sink on 127.0.0.1:PORT, logging to ROOT/smtp-sink.log.

    As root smtp-sink must be told whom to run as (``-u``); we give it
    Postfix's unprivileged account.
    """
    root.mkdir(parents=True, exist_ok=True)
    argv = [tool("smtp-sink"), "-c", "-h", HOSTNAME, *extra_args]
    if os.geteuid() == 0:
        argv += ["-u", MAIL_OWNER]
    argv += [f"{LOOPBACK}:{port}", str(backlog)]
    daemon = start_daemon(
        "smtp-sink", argv, lifetime=lifetime, log_path=root / "smtp-sink.log"
    )
    try:
        wait_for_banner(port, daemon=daemon)
    except PeerError:
        daemon.stop()
        raise
    return SmtpSink(port, daemon)
