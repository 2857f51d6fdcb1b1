"""A real ``postroom serve`` in a subprocess, for end-to-end tests.

Tests that want the product as an operator runs it (the CLI entry point,
its config file, its log on stderr, signals) start it with
``start_postroom``::

    with start_postroom(tmp_path, settings={"smtp": {"max_recipients": 5}}) as s:
        smtplib.SMTP(LOOPBACK, s.relay_port) ...
        assert "received" in s.log_text()

What it does:

- Writes ``ROOT/postroom.toml`` with every listener on a free port of
  127.0.0.1, data under ``ROOT/data`` and our test names (the hostname
  ``mx.postroom.test``, the local domain ``postroom.test``): nothing a
  test does can reach another machine or ask a resolver.
- Starts ``python -m postroom -c ROOT/postroom.toml serve`` with stderr
  appended to ``ROOT/serve.log`` (a file, not a pipe: a pipe nobody
  drains stalls a server that logs thousands of lines).
- Returns once every listener accepts connections: the plain ones greet
  with 220 and the implicit-TLS one completes a handshake and greets;
  the HTTP API (only when ``kinds`` names ``http``, else it is off, as
  are POP3 and IMAP) answers a request.
  Those probes are real sessions, so they appear in the log as
  ``connect``/``disconnect`` pairs (never as ``received``).
- Stops the server with SIGTERM (``stop``) or SIGKILL (``kill``), always
  by PID.

Processes. ``pid`` is the process ``postroom serve`` started as. With
``smtp.workers`` above 1 (the default on a machine with two cores or
more) it is a supervisor and the SMTP sessions run in forked workers,
``worker_pids()``. ``stop`` sends SIGTERM to ``pid`` only, as an init
system would, and the supervisor passes it on. ``kill`` is a crash of
the whole node: SIGKILL to every worker, then to the supervisor, so
that no worker gets the chance to stop gracefully (workers are told
to stop when their supervisor dies). A test that wants one worker to
crash kills that PID itself.

Like the helpers in ``peers``, this follows the house rules for
processes on a shared machine: the server runs in a session of its own
under coreutils ``timeout``, so it ends by itself after ``lifetime``
seconds even if the test runner is killed first, and signals go to
PIDs, never to a name. ``timeout`` itself is not part of the node.

Port choice is racy by nature (a port is free when we look, then we
let it go); when the server cannot bind, ``start`` picks new ports and
tries again, up to ``BIND_ATTEMPTS`` times.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from postroom.testing import peers

if TYPE_CHECKING:
    from postroom.queue.store import QueueStore

LOOPBACK = "127.0.0.1"
HOSTNAME = "mx.postroom.test"
LOCAL_DOMAIN = "postroom.test"
KINDS = ("relay", "submission", "submissions")
# Mailbox listeners, opened only when a test names them in ``kinds``;
# a node without them has the service switched off.
POP3_KINDS = ("pop3", "pop3s")
IMAP_KINDS = ("imap", "imaps")
# The HTTP API, likewise off unless a test names "http" in ``kinds``.
HTTP_KIND = "http"
# Listeners speaking TLS from the first byte, and each kind's greeting.
_IMPLICIT_TLS = ("submissions", "pop3s", "imaps")
_GREETINGS = {"pop3": b"+OK", "pop3s": b"+OK", "imap": b"* OK", "imaps": b"* OK"}
BIND_ATTEMPTS = 3

# What the server prints on stderr when a listener cannot bind.
_CANNOT_LISTEN = "cannot listen"


class ServerError(RuntimeError):
    """The server would not start, or did not stop when told to."""


class PostroomProcess:
    """One node: its config file, data directory, log and process.

    The same object can be started again after ``stop`` or ``kill``; it
    keeps its ports, config and data directory, so a restart finds the
    spool the last run left behind. The log file is appended to, and
    ``log_text(since_start=True)`` reads only the current run's part.
    """

    def __init__(
        self,
        root: Path,
        *,
        settings: Mapping[str, Any] | None = None,
        hostname: str = HOSTNAME,
        kinds: Sequence[str] = KINDS,
        lifetime: float = 300.0,
    ) -> None:
        """Arguments:

        root: a directory for config, data and log (created if absent).
        settings: TOML settings over our defaults, as nested dicts:
            ``{"smtp": {"max_message_size": 1000}}``. A section given
            here is merged key by key into ours.
        kinds: which listeners to open (each on a free port).
        lifetime: seconds after which the server stops by itself.
        """
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.root / "data"
        self.config_path = self.root / "postroom.toml"
        self.log_path = self.root / "serve.log"
        self.hostname = hostname
        self.kinds = tuple(kinds)
        self.settings = dict(settings or {})
        self.lifetime = lifetime
        self.ports: dict[str, int] = {}
        self.wrapper: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self._pid: int | None = None
        self._log_start = 0
        self._choose_ports()

    # -- Addresses ---------------------------------------------------------

    @property
    def relay_port(self) -> int:
        return self.ports["relay"]

    @property
    def submission_port(self) -> int:
        return self.ports["submission"]

    @property
    def submissions_port(self) -> int:
        return self.ports["submissions"]

    @property
    def pop3_port(self) -> int:
        return self.ports["pop3"]

    @property
    def pop3s_port(self) -> int:
        return self.ports["pop3s"]

    @property
    def imap_port(self) -> int:
        return self.ports["imap"]

    @property
    def imaps_port(self) -> int:
        return self.ports["imaps"]

    @property
    def http_port(self) -> int:
        return self.ports[HTTP_KIND]

    @property
    def http_url(self) -> str:
        """``http://127.0.0.1:PORT``, the API's base URL."""
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def cert_path(self) -> Path:
        """The self-signed certificate the server made at its first start."""
        return self.data_dir / "tls" / "self-signed.crt"

    def client_context(self) -> ssl.SSLContext:
        """A client TLS context that trusts (only) this server's certificate.

        Verification stays on: the certificate names ``hostname``,
        ``localhost`` and 127.0.0.1, so clients that connect to the
        loopback address check the name too.
        """
        context = ssl.create_default_context(cafile=str(self.cert_path))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    # -- Lifecycle -----------------------------------------------------------

    @property
    def pid(self) -> int:
        """The PID of the running server process (not of its wrapper)."""
        if self._pid is None or not self.running:
            raise ServerError("the server is not running")
        return self._pid

    def worker_pids(self) -> list[int]:
        """The PIDs of the forked workers; [] for a single-process node."""
        if self._pid is None or not self.running:
            return []
        assert self.wrapper is not None
        return [
            pid
            for pid in peers.group_pids(self.wrapper.pid)
            if _parent_of(pid) == self._pid
        ]

    @property
    def running(self) -> bool:
        return self.wrapper is not None and self.wrapper.poll() is None

    def start(
        self, ready_timeout: float = 20.0, *, wait: bool = True
    ) -> PostroomProcess:
        """Start the server; return when every listener answers.

        Raises ServerError, with the tail of the log, if it exits or is
        not ready within ``ready_timeout`` seconds. With ``wait=False``
        return as soon as the process exists (to catch it while it is
        still starting, say).
        """
        if self.running:
            raise ServerError("the server is already running")
        for attempt in range(1, BIND_ATTEMPTS + 1):
            self._write_config()
            self._spawn()
            if not wait:
                return self
            try:
                self._wait_ready(ready_timeout)
                return self
            except ServerError as e:
                lost_race = _CANNOT_LISTEN in self.log_text(since_start=True)
                self._force_stop()
                if not lost_race or attempt == BIND_ATTEMPTS:
                    raise e from None
                # Someone took one of our ports in between: new ports.
                self._choose_ports()
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM the server and wait for it; return its exit status.

        If it is still running after ``timeout`` seconds it is killed and
        ServerError is raised: a graceful stop that hangs is a bug.
        """
        if self.wrapper is None:
            raise ServerError("the server was never started")
        if self.running:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.wrapper.wait(timeout)
            except subprocess.TimeoutExpired:
                self._force_stop()
                raise ServerError(
                    f"server did not stop within {timeout:g}s of SIGTERM"
                    f"{self.log_tail()}"
                ) from None
        self.returncode = self.wrapper.returncode
        self._check_group_gone()
        return self.returncode

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for a server that is stopping by itself; its exit status.

        ServerError (after killing it) if it is still running after
        ``timeout`` seconds.
        """
        if self.wrapper is None:
            raise ServerError("the server was never started")
        try:
            self.wrapper.wait(timeout)
        except subprocess.TimeoutExpired:
            self._force_stop()
            raise ServerError(
                f"server still running after {timeout:g}s{self.log_tail()}"
            ) from None
        self.returncode = self.wrapper.returncode
        self._check_group_gone()
        return self.returncode

    def kill(self) -> None:
        """Crash the node: SIGKILL its workers and itself, by PID."""
        if not self.running:
            raise ServerError("the server is not running")
        main = self.pid
        # Workers first: killed after their supervisor they would get
        # its death signal (SIGTERM) first and start a graceful stop.
        for pid in self.worker_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        os.kill(main, signal.SIGKILL)
        assert self.wrapper is not None
        # The wrapper notices at once and exits the way its child did.
        self.wrapper.wait(10.0)
        self._reap_group()
        self.returncode = -signal.SIGKILL

    def close(self) -> None:
        """Stop the server if it runs; for ``finally`` blocks and fixtures.

        Tries SIGTERM first so that the server releases its files the
        normal way, and kills it if it does not go.
        """
        if not self.running:
            return
        with contextlib.suppress(ServerError):
            self.stop(timeout=15.0)
        self._force_stop()

    def __enter__(self) -> PostroomProcess:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- The log -------------------------------------------------------------

    def log_text(self, *, since_start: bool = False) -> str:
        """The server's stderr: all runs, or only the current one."""
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return ""
        if since_start:
            data = data[self._log_start :]
        return data.decode("utf-8", "replace")

    def log_events(self, word: str, *, since_start: bool = False) -> list[str]:
        """The log messages with one event word, timestamp and level cut
        off: ``QUEUEID: received client=...`` or ``connect client=...``."""
        found = []
        for line in self.log_text(since_start=since_start).splitlines():
            message = log_message(line)
            if message is None:
                continue
            words = message.split(" ", 2)
            if words[0] == word or (
                len(words) > 1 and words[0].endswith(":") and words[1] == word
            ):
                found.append(message)
        return found

    def wait_for_log(self, text: str, timeout: float = 10.0) -> bool:
        """Poll the current run's log until it contains ``text``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log_text(since_start=True):
                return True
            time.sleep(0.05)
        return False

    def log_tail(self, lines: int = 20) -> str:
        tail = self.log_text().splitlines()[-lines:]
        return "".join(f"\n  | {line}" for line in tail)

    # -- The CLI against this node --------------------------------------------

    def cli(
        self, *args: str, input: str | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``postroom -c CONFIG ARGS...``; never raises on its status.
        Works before the first start too (the config is written now)."""
        if not self.config_path.exists():
            self._write_config()
        return subprocess.run(
            [sys.executable, "-m", "postroom", "-c", str(self.config_path), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_clean_environ(),
            cwd=self.root,
        )

    def cli_many(
        self, *commands: Sequence[str], timeout: float = 60.0
    ) -> list[subprocess.CompletedProcess[str]]:
        """Run several ``postroom -c CONFIG ...`` commands at once.

        For commands that only read (``queue show``, ``queue list``):
        each pays an interpreter start, and they may as well pay it side
        by side. Results come back in the order given.
        """
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "postroom", "-c", str(self.config_path), *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=_clean_environ(),
                cwd=self.root,
            )
            for args in commands
        ]
        results = []
        for proc in procs:
            try:
                out, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise
            results.append(
                subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
            )
        return results

    def add_user(self, address: str, password: str) -> None:
        """Create an account, as ``postroom user add`` does.

        Done in this process with the functions the command uses: an
        interpreter start per account would double the cost of a test
        module's setup. The data directory is made first, since an
        account may be added before the node's first start.
        """
        from postroom import config as config_mod
        from postroom.server import passwords
        from postroom.store import db, users

        self._write_config()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = config_mod.load(self.config_path, environ={})
        engine = db.create_engine(config.database_url)
        try:
            with engine.begin() as conn:
                users.add(
                    conn,
                    users.normalize_address(address),
                    passwords.hash_password(password),
                )
        finally:
            engine.dispose()

    @contextlib.contextmanager
    def queue(self) -> Iterator[QueueStore]:
        """A ``QueueStore`` on this node's queue (usable while it runs)."""
        from postroom import config as config_mod
        from postroom.queue import store
        from postroom.store import db

        config = config_mod.load(self.config_path, environ={})
        engine = db.create_engine(config.database_url)
        try:
            yield store.QueueStore(engine, config.spool_path)
        finally:
            engine.dispose()

    # -- Internals -----------------------------------------------------------

    def _choose_ports(self) -> None:
        # Hold every socket until all are chosen, so that the ports
        # differ from one another; they are released before the server
        # starts (see the module docstring about the race).
        socks = []
        try:
            for kind in self.kinds:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(sock)
                sock.bind((LOOPBACK, 0))
                self.ports[kind] = sock.getsockname()[1]
        finally:
            for sock in socks:
                sock.close()

    def _write_config(self) -> None:
        sections: dict[str, dict[str, Any]] = {
            "": {"data_dir": str(self.data_dir), "hostname": self.hostname},
            "smtp": {
                "listeners": [
                    {"kind": kind, "address": f"{LOOPBACK}:{port}"}
                    for kind, port in self.ports.items()
                    if kind in KINDS
                ],
                "local_domains": [LOCAL_DOMAIN],
                "trusted_networks": ["127.0.0.0/8"],
                # A failed AUTH costs a second by default; tests that
                # fail on purpose should not wait for it.
                "auth_failure_delay": 0.05,
            },
            # No delivery unless a test asks for it (and then it must
            # name its own DNS server): a test node must never resolve
            # or connect beyond loopback, and most tests want accepted
            # mail to stay queued where they can look at it.
            "delivery": {
                "enabled": False,
                "allowed_networks": ["127.0.0.0/8", "::1/128"],
            },
            # Likewise no SPF/DKIM/DMARC checks (they ask the DNS about
            # the sender) unless a test asks, with its own DNS server.
            "mailauth": {"enabled": False},
            "pop3": self._mailbox_section(POP3_KINDS),
            "imap": self._mailbox_section(IMAP_KINDS),
            "http": {"address": f"{LOOPBACK}:{self.ports[HTTP_KIND]}"}
            if HTTP_KIND in self.ports
            else {"enabled": False},
        }
        for key, value in self.settings.items():
            if isinstance(value, Mapping):
                sections.setdefault(key, {}).update(value)
            else:
                sections[""][key] = value
        self.config_path.write_text(render_toml(sections))

    def _mailbox_section(self, kinds: Sequence[str]) -> dict[str, Any]:
        listeners = [
            {"kind": kind, "address": f"{LOOPBACK}:{port}"}
            for kind, port in self.ports.items()
            if kind in kinds
        ]
        if not listeners:
            return {"enabled": False}
        # As for SMTP AUTH: failures on purpose should not cost seconds.
        return {"listeners": listeners, "auth_failure_delay": 0.05}

    def _spawn(self) -> None:
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        argv = [
            "timeout",
            "-k",
            "5",
            f"{self.lifetime:.0f}",
            sys.executable,
            "-m",
            "postroom",
            "-c",
            str(self.config_path),
            "serve",
        ]
        with open(self.log_path, "ab") as log:
            self.wrapper = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=_clean_environ(),
                cwd=self.root,
            )
        self.returncode = None
        self._pid = self._find_child(self.wrapper.pid)

    @staticmethod
    def _find_child(wrapper_pid: int, timeout: float = 5.0) -> int:
        # The wrapper forks the server at once; the child keeps its PID
        # across exec, so the first child we see is the server.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for pid in peers.group_pids(wrapper_pid):
                if pid != wrapper_pid and _parent_of(pid) == wrapper_pid:
                    return pid
            time.sleep(0.01)
        raise ServerError("timeout(1) did not start the server")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        waiting = dict(self.ports)
        while waiting:
            if not self.running:
                assert self.wrapper is not None
                raise ServerError(
                    f"postroom serve exited with status "
                    f"{self.wrapper.returncode}{self.log_tail()}"
                )
            for kind, port in list(waiting.items()):
                if kind == HTTP_KIND:
                    ready = _answers_http(port)
                else:
                    ready = _greets(
                        port,
                        tls=kind in _IMPLICIT_TLS,
                        greeting=_GREETINGS.get(kind, b"220"),
                    )
                if ready:
                    del waiting[kind]
            if waiting and time.monotonic() > deadline:
                raise ServerError(
                    f"listeners {sorted(waiting)} not ready within "
                    f"{timeout:g}s{self.log_tail()}"
                )
            if waiting:
                time.sleep(0.05)

    def _force_stop(self) -> None:
        # Last resort, by PID: workers, the server, then its wrapper.
        wrapper = self.wrapper
        if wrapper is None:
            return
        if wrapper.poll() is None:
            for pid in [*self.worker_pids(), self._pid, wrapper.pid]:
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                wrapper.wait(10.0)
            self.returncode = wrapper.returncode
        self._reap_group()

    def _reap_group(self, grace: float = 5.0) -> list[int]:
        """Kill, by PID, whatever of the node outlived its main process
        by ``grace`` seconds; return those PIDs."""
        assert self.wrapper is not None
        deadline = time.monotonic() + grace
        while peers.group_pids(self.wrapper.pid):
            if time.monotonic() > deadline:
                leftovers = peers.group_pids(self.wrapper.pid)
                for pid in leftovers:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                return leftovers
            time.sleep(0.02)
        return []

    def _check_group_gone(self) -> None:
        # After a graceful stop nothing of the node may be left running.
        leftovers = self._reap_group()
        if leftovers:
            raise ServerError(
                f"processes {leftovers} outlived the server "
                f"and were killed{self.log_tail()}"
            )


def start_postroom(root: Path, **options: Any) -> PostroomProcess:
    """Make a ``PostroomProcess`` (same arguments) and start it."""
    return PostroomProcess(root, **options).start()


def render_toml(sections: Mapping[str, Mapping[str, Any]]) -> str:
    """TOML for ``{"": top-level keys, "section": {...}}``.

    Covers what our config uses: strings, numbers, booleans, lists of
    those and lists of inline tables.
    """
    lines = [f"{key} = {_toml_value(v)}" for key, v in sections.get("", {}).items()]
    for name, values in sections.items():
        if not name:
            continue
        lines.append(f"\n[{name}]")
        lines += [f"{key} = {_toml_value(v)}" for key, v in values.items()]
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, Mapping):
        inner = ", ".join(
            f"{_toml_value(str(k))} = {_toml_value(v)}" for k, v in value.items()
        )
        return "{" + inner + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def _greets(port: int, *, tls: bool, greeting: bytes = b"220") -> bool:
    """Whether 127.0.0.1:PORT answers with *greeting* now."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=2.0) as raw:
            sock: socket.socket = raw
            if tls:
                # Readiness only; the certificate is checked by the tests.
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                sock = context.wrap_socket(raw, server_hostname=HOSTNAME)
            line = sock.makefile("rb").readline()
            with contextlib.suppress(OSError):
                sock.sendall(b"QUIT\r\n")
                sock.makefile("rb").readline()
            return line.startswith(greeting)
    except (OSError, ssl.SSLError):
        return False


def _answers_http(port: int) -> bool:
    """Whether 127.0.0.1:PORT answers an HTTP request now (any status:
    the probe asks for a path that does not exist)."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=2.0) as sock:
            sock.sendall(b"GET /ready HTTP/1.0\r\nHost: postroom.test\r\n\r\n")
            return sock.makefile("rb").readline().startswith(b"HTTP/1.")
    except OSError:
        return False


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def log_message(line: str) -> str | None:
    """The message part of one log line, or None for other output.

    Lines look like ``2026-01-01 10:00:00,123 INFO postroom.x: MESSAGE``
    (``logs.setup``).
    """
    parts = line.split(" ", 4)
    if len(parts) == 5 and parts[3].startswith("postroom.") and parts[3].endswith(":"):
        return parts[4]
    return None


def _clean_environ() -> dict[str, str]:
    # POSTROOM_* variables override the config file (config.py); a
    # developer's own settings must not leak into the node under test.
    return {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM_")}


# -- Reading results back ---------------------------------------------------

_QUEUED_AS = re.compile(r"queued as (\S+)")


def queued_as(text: str | bytes) -> str:
    """The queue id in a ``250 2.0.0 Ok: queued as ID`` reply (or in a
    transcript holding one); AssertionError if there is none, or if it
    is not shaped like a queue id (``ids.is_queue_id``)."""
    from postroom import ids

    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    match = _QUEUED_AS.search(text)
    assert match is not None, f"no 'queued as' in {text!r}"
    assert ids.is_queue_id(match.group(1)), f"bad queue id in {text!r}"
    return match.group(1)


def split_received(content: bytes) -> tuple[bytes, bytes]:
    """Split stored content into our prepended Received header (with its
    folded lines and CRLF) and the message exactly as the client sent it.
    AssertionError if the content does not start with a Received header.
    """
    assert content.startswith(b"Received: "), content[:80]
    end = 0
    while True:
        end = content.index(b"\r\n", end) + 2
        if content[end : end + 1] not in (b" ", b"\t"):
            return content[:end], content[end:]
