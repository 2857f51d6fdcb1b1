"""``postroom serve``: run a node in the foreground until SIGTERM/SIGINT.

Process model
-------------
With ``smtp.workers = 1`` everything runs in this process. With more,
this process becomes a small supervisor (the shape of Postfix's master):

1. It binds every listening socket itself, so a port already in use is
   one clear error before anything starts, and so the sockets outlive
   any one worker: connections waiting in the backlog are not lost
   when a worker dies.
2. It recovers every spool under the spool directory, including those
   of workers that a smaller ``workers`` setting no longer starts.
3. It forks the workers. Each has its own event loop, its own spool
   (``w1``, ``w2``, ...) with its own fsync thread and lock, and its own
   database connections; they share the listening sockets and a
   ``LoadBoard`` (sessions per worker), with which a busy worker leaves
   the next connection to a less busy one (``server/listening.py``).
   Python holds one core per process, so this is how a node uses a
   second core.
4. It restarts a worker that dies (``kill -9`` included); the new worker
   recovers the dead one's spool before it accepts mail. A worker exits
   by itself when the supervisor dies (``PR_SET_PDEATHSIG``).
5. It forks one delivery process (number 0, spool ``d1`` for the
   notices it writes), the queue manager of ``delivery/engine.py``,
   unless ``delivery.enabled`` is off; it is restarted like a worker.
   With one worker, the engine runs in the worker's event loop instead
   and writes notices to the worker's spool. The webhook sender
   (``webhooks/sender.py``) runs beside the engine, so exactly one
   process posts events.
6. SIGTERM or SIGINT is passed on to every worker, which finishes the
   transactions in flight (see ``ListeningService.stop``); the supervisor exits
   once all of them have.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import ssl
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from postroom import logs
from postroom.config import Config, Listener, listener_setting
from postroom.errors import ConfigError
from postroom.server.listening import LoadBoard, join_board

if TYPE_CHECKING:
    import sqlalchemy as sa

    from postroom.api.server import HttpService
    from postroom.mailbox.store import MailStore
    from postroom.queue.spool import Spool
    from postroom.server.auth import Authenticator
    from postroom.server.smtpd import SmtpServer


class MailboxService(Protocol):
    """What ``_worker`` needs of a mailbox server (POP3, IMAP)."""

    async def stop(self) -> None: ...

log = logging.getLogger("postroom.serve")

# A worker that dies this many times within RESTART_WINDOW seconds is
# not restarted again: something is wrong that restarting will not fix.
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("serve", help="run the mail server in the foreground")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from postroom.cli.common import load_config

    config = load_config(args)
    logs.setup(config.log.level)
    return serve(config)


def worker_count(config: Config) -> int:
    """``smtp.workers``, with 0 meaning one per core (at most 4)."""
    if config.smtp.workers:
        return config.smtp.workers
    return max(1, min(4, os.cpu_count() or 1))


def serve(config: Config) -> int:
    """Run until a signal; return the process exit status."""
    Path(config.data_dir).mkdir(parents=True, exist_ok=True)
    sockets = bind_listeners(all_listeners(config))
    workers = worker_count(config)
    if workers == 1:
        return _run_loop(_worker(config, sockets, spool_name="main"))
    _run_loop(_recover_all(config))
    return Supervisor(config, sockets, workers).run()


def all_listeners(config: Config) -> list[Listener]:
    """Every listener of every service this node runs: SMTP, then the
    mailbox services (POP3; IMAP joins here) unless disabled."""
    listeners = list(config.smtp.listeners)
    if config.pop3.enabled:
        listeners += config.pop3.listeners
    if config.imap.enabled:
        listeners += config.imap.listeners
    if config.http.enabled:
        listeners.append(config.http.listener)
    return listeners


def bind_listeners(listeners: list[Listener]) -> dict[str, socket.socket]:
    """Bind and listen on every configured address; ConfigError if one
    cannot be had."""
    sockets: dict[str, socket.socket] = {}
    for listener in listeners:
        family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((listener.host, listener.port))
            sock.listen(1024)
        except OSError as e:
            sock.close()
            for other in sockets.values():
                other.close()
            raise ConfigError(
                f"{listener_setting(listener.kind)}: cannot listen on "
                f"{listener.host}:{listener.port}: {e.strerror}"
            ) from None
        sock.setblocking(False)
        sockets[listener.name] = sock
    return sockets


def _run_loop(coro: object) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.run(coro)  # type: ignore[arg-type]
    result: int = uvloop.run(coro)  # type: ignore[arg-type]
    return result


async def _recover_all(config: Config) -> int:
    from postroom.queue.spool import recover_all
    from postroom.store.db import create_engine

    engine = create_engine(config.database_url)
    try:
        await recover_all(config.spool_path, engine)
    finally:
        engine.dispose()
    return 0


async def _worker(
    config: Config,
    sockets: dict[str, socket.socket],
    *,
    spool_name: str,
    workers: int = 1,
) -> int:
    """One worker: spool, SMTP listeners, until SIGTERM/SIGINT."""
    from postroom.mailbox.recipients import LocalRecipients
    from postroom.queue.spool import Spool
    from postroom.queue.store import QueueStore
    from postroom.server import tls
    from postroom.server.auth import Authenticator
    from postroom.server.smtpd import SmtpServer
    from postroom.store.db import create_engine

    engine = create_engine(config.database_url)
    spool = Spool(
        config.spool_path,
        engine,
        name=spool_name,
        fsync=config.queue.fsync,
        segment_size=config.queue.segment_size,
    )
    await spool.start()
    authenticator = Authenticator(engine)
    # One view of local users for SMTP (RCPT, quotas, aliases) and the
    # mailbox services, whose APPEND and COPY need the same quotas.
    recipients = LocalRecipients.from_config(config, engine)
    tls_context = (
        tls.server_context(config)
        if config.tls.cert_file or config.tls.self_signed
        else None
    )
    server = SmtpServer(
        config,
        spool,
        # SMTP alone also takes API keys (user "apikey"), as SendGrid's
        # relay does; POP3 and IMAP log in to mailboxes, which keys
        # have none of.
        authenticator=Authenticator(engine, api_keys=True),
        tls_context=tls_context,
        workers=workers,
        queue=QueueStore(engine, config.spool_path)
        if config.delivery.enabled
        else None,
        recipients=recipients,
    )
    await server.start(sockets)
    mailbox_servers = await _start_mailbox_servers(
        config, sockets, authenticator, tls_context, workers, recipients.store
    )
    http = await _start_http(config, sockets, engine, spool, server)
    delivery = None
    hooks = None
    if workers == 1 and config.delivery.enabled:
        from postroom.delivery.service import start_engine
        from postroom.webhooks.sender import start_sender

        delivery = await start_engine(config, engine, spool)
        # Where the engine runs, so that one process posts webhooks.
        hooks = await start_sender(config.webhooks, engine)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if workers == 1:
        _announce(config)
    await stop.wait()
    if hooks is not None:
        await hooks.stop()
    if delivery is not None:
        await delivery.stop()
    if http is not None:
        # Before the spool closes: requests in flight still need it.
        await http.stop()
    await server.stop()
    for mailbox_server in mailbox_servers:
        await mailbox_server.stop()
    await spool.close()
    engine.dispose()
    return 0


async def _start_http(
    config: Config,
    sockets: dict[str, socket.socket],
    engine: sa.Engine,
    spool: Spool,
    server: SmtpServer,
) -> HttpService | None:
    """The HTTP API (``postroom/api``) on the shared socket, unless
    ``http.enabled`` is off. It runs in every worker, as SMTP does,
    and queues into this worker's spool; it shares the SMTP server's
    policy, so local recipients and aliases are judged alike."""
    if not config.http.enabled:
        return None
    from postroom.api.context import ApiContext
    from postroom.api.server import HttpService

    context = ApiContext(
        config,
        engine,
        spool,
        policy=server.policy,
        listener=config.http.listener.name,
    )
    http = HttpService(context, grace=config.smtp.shutdown_grace)
    await http.start(sockets)
    return http


async def _start_mailbox_servers(
    config: Config,
    sockets: dict[str, socket.socket],
    authenticator: Authenticator,
    tls_context: ssl.SSLContext | None,
    workers: int,
    store: MailStore,
) -> list[MailboxService]:
    """Start the services that read mailboxes (POP3; IMAP joins here),
    on the sockets the supervisor bound; return them for ``stop``.
    *store* must know the quotas (``LocalRecipients.store``): IMAP
    APPEND and COPY are refused over quota only through it."""
    from postroom.server.pop3d import Pop3Server

    started: list[MailboxService] = []
    if config.pop3.enabled:
        pop3 = Pop3Server(
            config, store, authenticator, tls_context=tls_context, workers=workers
        )
        await pop3.start(sockets)
        started.append(pop3)
    if config.imap.enabled:
        from postroom.server.imapd import ImapServer

        imap = ImapServer(
            config, store, authenticator, tls_context=tls_context, workers=workers
        )
        await imap.start(sockets)
        started.append(imap)
    return started


async def _delivery_process(config: Config) -> int:
    """The delivery engine alone, with spool ``d1`` for its notices,
    and the webhook sender (one per node: see webhooks/sender.py)."""
    from postroom.delivery.service import start_engine
    from postroom.queue.spool import Spool
    from postroom.store.db import create_engine
    from postroom.webhooks.sender import start_sender

    engine = create_engine(config.database_url)
    spool = Spool(
        config.spool_path,
        engine,
        name="d1",
        fsync=config.queue.fsync,
        segment_size=config.queue.segment_size,
    )
    await spool.start()
    delivery = await start_engine(config, engine, spool)
    hooks = await start_sender(config.webhooks, engine)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if hooks is not None:
        await hooks.stop()
    await delivery.stop()
    await spool.close()
    engine.dispose()
    return 0


def _announce(config: Config) -> None:
    where = ", ".join(
        f"{lst.kind} {lst.host}:{lst.port}" for lst in all_listeners(config)
    )
    print(
        f"postroom: serving {where}; data in {config.data_dir}",
        file=sys.stderr,
        flush=True,
    )


class Supervisor:
    """Forks, watches and stops the workers (see the module docstring)."""

    def __init__(
        self, config: Config, sockets: dict[str, socket.socket], workers: int
    ) -> None:
        self.config = config
        self.sockets = sockets
        self.workers = workers
        self.children: dict[int, int] = {}  # pid -> worker number
        self.deaths: list[float] = []
        self.stopping = False
        # Sessions per worker, shared with them: who accepts next
        # (server/listening.py).
        self.board = LoadBoard(workers)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        if self.config.delivery.enabled:
            self._start(0)
        for number in range(1, self.workers + 1):
            self._start(number)
        _announce(self.config)
        status = 0
        while self.children:
            try:
                pid, code = os.waitpid(-1, 0)
            except ChildProcessError:  # pragma: no cover - none left
                break
            if pid not in self.children:
                continue
            number = self.children.pop(pid)
            if self.stopping:
                continue
            log.error(
                "worker exited pid=%d worker=%d status=%s",
                pid,
                number,
                _describe_status(code),
            )
            if self._too_many_deaths():
                log.error("workers keep dying; stopping")
                status = 1
                self._on_signal(signal.SIGTERM, None)
                continue
            time.sleep(0.2)
            self._start(number)
        return status

    def _start(self, number: int) -> None:
        parent = os.getpid()
        pid = os.fork()
        if pid:
            self.children[pid] = number
            return
        # In the worker: default signal handling, die with the parent.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        _die_with_parent(parent)
        status = 1
        try:
            if number == 0:
                for sock in self.sockets.values():
                    sock.close()
                status = _run_loop(_delivery_process(self.config))
            else:
                join_board(self.board, number - 1)
                status = _run_loop(
                    _worker(
                        self.config,
                        self.sockets,
                        spool_name=f"w{number}",
                        workers=self.workers,
                    )
                )
        except BaseException:
            log.exception("worker %d failed", number)
        finally:
            logging.shutdown()
            os._exit(status)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.stopping = True
        # Our copies of the listening sockets would keep the kernel
        # accepting connections that no draining worker will serve.
        for sock in self.sockets.values():
            sock.close()
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _too_many_deaths(self) -> bool:
        now = time.monotonic()
        self.deaths = [t for t in self.deaths if now - t < RESTART_WINDOW]
        self.deaths.append(now)
        return len(self.deaths) > MAX_RESTARTS


def _describe_status(code: int) -> str:
    if os.WIFSIGNALED(code):
        return f"signal {os.WTERMSIG(code)}"
    return f"exit {os.WEXITSTATUS(code)}"


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGTERM us when the supervisor dies (even by kill -9),
    so no worker keeps serving without anyone to restart it."""
    if not sys.platform.startswith("linux"):  # pragma: no cover
        return
    PR_SET_PDEATHSIG = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # pragma: no cover
        pass
    if os.getppid() != parent:  # It died before prctl took effect.
        os._exit(1)
