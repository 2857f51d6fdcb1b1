"""One POP3 connection: moves bytes between a transport and the core.

Built like ``session.py`` for SMTP: an ``asyncio.Protocol`` whose
``data_received`` feeds the core (``protocol/pop3``) and whose ``_pump``
answers every event it can at once, so a pipelined batch of commands
(RFC 2449 PIPELINING) costs one read and one write. Three steps wait,
as tasks, with reading paused: the login (scrypt in a thread, then the
maildrop's lock and listing in a thread), the TLS handshake after STLS,
and the removal of deleted messages at QUIT.

RETR and TOP are answered on the loop: the file is read with one
``read`` and written with one ``write``, and dot-stuffing is one
``bytes.replace`` that copies nothing when no line starts with a dot.
A client that pipelines a whole maildrop's RETRs faster than it reads
the answers is held back by write flow control: ``pause_writing``
stops the pump (and reading) until the transport's buffer drains.

Timeouts: one lazily moved timer, as in SMTP. RFC 1939 §3 asks for an
inactivity autologout of at least 10 minutes (``pop3.idle_timeout``);
it closes without a word and removes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from typing import TYPE_CHECKING, Any

from postroom import logs
from postroom.errors import AuthError, MailboxError, MailboxLocked
from postroom.protocol.pop3 import events, responses
from postroom.protocol.pop3.events import NEED_DATA, PAUSED
from postroom.protocol.pop3.responses import Response
from postroom.protocol.pop3.server import Options, ServerConnection
from postroom.server import tls
from postroom.server.pop3_maildrop import Maildrop
from postroom.store import users

if TYPE_CHECKING:
    from postroom.config import Listener
    from postroom.server.pop3d import Pop3Server

log = logging.getLogger(__name__)

# Bytes a client may send ahead while a step waits; then reading pauses.
_MAX_BUFFERED_WHILE_BUSY = 64 * 1024


class Pop3Session(asyncio.Protocol):
    def __init__(self, server: Pop3Server, listener: Listener) -> None:
        self.server = server
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.core: ServerConnection | None = None
        self.maildrop: Maildrop | None = None
        self.peer = ""
        self.client_ip = ""
        self._started = 0.0
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._busy = False
        self._read_paused = False
        self._write_paused = False
        self._closing = False
        self._auth_failures = 0
        self._retrieved: set[int] = set()
        self._deleted = 0
        self._reason: str | None = None
        self._early = bytearray()
        self._updating = False

    # ------------------------------------------------------------------
    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._started = time.monotonic()
        peer = transport.get_extra_info("peername") or ("unknown", 0)
        self.client_ip = str(peer[0])
        self.peer = f"{peer[0]}:{peer[1]}"
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        server = self.server
        implicit = self.listener.kind == "pop3s"
        self.core = core = ServerConnection(
            Options(
                tls_available=server.tls_context is not None and not implicit,
                tls_active=implicit,
                plaintext_allowed=self._plaintext_allowed(),
            )
        )
        refusal = server.admit(self)
        log.info(logs.event("connect", client=self.peer, listener=self.listener.name))
        core.greet(refusal)
        self._pump()
        if refusal is None:
            self._arm_timer()

    def data_received(self, data: bytes) -> None:
        core = self.core
        assert core is not None
        if isinstance(core.awaiting, events.StartTls):
            # Decrypted bytes can come with the handshake's last flight,
            # before _start_tls has told the core. Reading was paused
            # before our +OK went out, so these cannot be cleartext
            # injected after STLS; keep them until the core knows.
            self._early += data
            return
        core.receive_data(data)
        if not self._busy and not self._write_paused:
            self._pump()
        elif core.buffered > _MAX_BUFFERED_WHILE_BUSY:
            self._pause_reading()
        self._deadline = asyncio.get_running_loop().time() + self._timeout

    def eof_received(self) -> bool:
        assert self.core is not None
        self.core.receive_data(b"")
        if not self._busy and not self._write_paused:
            self._pump()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.server.release(self)
        if not self._updating:
            # A client may send QUIT and hang up at once; the UPDATE it
            # asked for still happens, and releases the maildrop itself.
            self._release_maildrop()
        core = self.core
        if core is None:
            return
        log.info(
            logs.event(
                "disconnect",
                client=self.peer,
                listener=self.listener.name,
                user=core.username,
                retrieved=len(self._retrieved) or None,
                deleted=self._deleted or None,
                duration=f"{time.monotonic() - self._started:.3f}",
                reason=self._reason,
                commands=_summary(core.counter) or None,
            )
        )
        self.transport = None

    def pause_writing(self) -> None:
        # The client reads slower than we answer; stop answering (and
        # reading) until the transport's buffer drains.
        self._write_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._resume()

    # ------------------------------------------------------------------
    # The conversation

    def _pump(self) -> None:
        core = self.core
        assert core is not None
        while not self._write_paused:
            event = core.next_event()
            if event is NEED_DATA:
                break
            if event is PAUSED:  # pragma: no cover - a driver bug
                raise AssertionError("core paused with no step running")
            if isinstance(event, events.Retrieve):
                self._retrieve(core, event)
            elif isinstance(event, events.Login):
                self._spawn(self._login(event))
                return
            elif isinstance(event, events.StartTls):
                self._spawn(self._start_tls())
                return
            elif isinstance(event, events.Update):
                # Set before the task runs: a connection lost in between
                # must leave the maildrop to the UPDATE the client asked
                # for, not release it under the task.
                self._updating = True
                self._spawn(self._update(event))
                return
            elif isinstance(event, events.Apop):
                # APOP needs secrets we do not keep (see docs).
                core.refuse_login(responses.APOP_UNAVAILABLE)
            elif isinstance(event, events.Closed):
                self._flush()
                if self.transport is not None:
                    self.transport.close()
                return
        self._flush()
        if self._closing and self.core is not None and self.core.awaiting is None:
            self.close(responses.SHUTTING_DOWN)

    def _retrieve(self, core: ServerConnection, event: events.Retrieve) -> None:
        assert self.maildrop is not None
        try:
            content = self.maildrop.read(event.entry.key)
        except (KeyError, FileNotFoundError):
            core.refuse_retrieve(responses.MESSAGE_GONE)
            return
        except (OSError, MailboxError) as e:
            log.error(
                logs.event(
                    "rejected",
                    client=self.peer,
                    user=core.username,
                    reason=f"read: {type(e).__name__}",
                )
            )
            core.refuse_retrieve(responses.READ_FAILED)
            return
        core.send_message(content)
        if event.lines is None:
            self._retrieved.add(event.entry.key)
        # Flush per message: a 10,000-message pipeline must not be
        # answered as one giant write.
        self._flush()

    def _spawn(self, coro: Any) -> None:
        self._flush()
        self._busy = True
        self._pause_reading()
        task = asyncio.get_running_loop().create_task(coro)
        self.server.tasks.add(task)
        task.add_done_callback(self._step_done)

    def _step_done(self, task: asyncio.Task[None]) -> None:
        self.server.tasks.discard(task)
        self._busy = False
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            # Our own failure: log once, tell the client, keep serving.
            log.error("session failure client=%s error=%r", self.peer, exc)
            if self.core is not None:
                self.core.close(responses.err("internal error", responses.SYS_TEMP))
                self._flush()
            if self.transport is not None:
                self.transport.close()
            return
        self._resume()

    def _resume(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing() or self._busy:
            return
        if self._read_paused and not self._write_paused:
            self._read_paused = False
            transport.resume_reading()
        self._pump()

    def _pause_reading(self) -> None:
        if not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()

    def _flush(self) -> None:
        assert self.core is not None
        out = self.core.data_to_send()
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out)

    def close(self, response: Response | None) -> None:
        """Say *response* (if any) and hang up; removes nothing."""
        if self.core is None or self.transport is None:
            return
        self.core.close(response)
        self._flush()
        self.transport.close()

    def begin_shutdown(self) -> None:
        """Close now unless a step (an UPDATE, say) is in flight; then
        close when it is done."""
        self._closing = True
        if not self._busy:
            self.close(responses.SHUTTING_DOWN)

    # ------------------------------------------------------------------
    # The waits

    async def _login(self, event: events.Login) -> None:
        core = self.core
        authenticator = self.server.authenticator
        assert core is not None
        try:
            good = await authenticator.verify(event.username, event.password)
        except AuthError as e:
            self._log_auth(event, "error", error=str(e))
            core.refuse_login(responses.AUTH_TEMPORARY)
            return
        if not good:
            await self._login_failed(event)
            return

        # The account is good: lock and list its maildrop.
        user = users.normalize_address(event.username)
        maildrop = Maildrop(self.server.store, user)
        try:
            entries = await asyncio.to_thread(maildrop.open)
        except MailboxLocked:
            self._log_auth(event, "in-use")
            core.refuse_login(responses.MAILDROP_LOCKED)
            return
        except (OSError, MailboxError) as e:
            self._log_auth(event, "error", error=type(e).__name__)
            core.refuse_login(responses.MAILDROP_UNAVAILABLE)
            return
        if self.transport is None:  # Gone while we waited.
            await asyncio.to_thread(maildrop.close)
            return
        self.maildrop = maildrop
        self._log_auth(event, "ok", messages=len(entries))
        core.accept_login(entries, username=user)

    async def _login_failed(self, event: events.Login) -> None:
        assert self.core is not None
        config = self.server.config.pop3
        self._auth_failures += 1
        self._log_auth(event, "failed", failures=self._auth_failures)
        # Slow down guessing as SMTP AUTH does: 1 s, 2 s, 4 s ...
        await asyncio.sleep(config.auth_failure_delay * 2 ** (self._auth_failures - 1))
        self.core.refuse_login(responses.AUTH_FAILED)
        if self._auth_failures >= config.auth_max_failures:
            self._reason = "auth-failures"
            self.close(responses.TOO_MANY_AUTH_FAILURES)

    def _log_auth(self, event: events.Login, result: str, **fields: Any) -> None:
        level = logging.WARNING if result in ("failed", "error") else logging.INFO
        log.log(
            level,
            logs.event(
                "auth",
                client=self.peer,
                user=event.username,
                mechanism=event.mechanism,
                result=result,
                **fields,
            ),
        )

    async def _start_tls(self) -> None:
        core = self.core
        transport = self.transport
        context = self.server.tls_context
        assert core is not None and transport is not None and context is not None
        new = await tls.start_server_tls(
            transport, self, context, timeout=self._timeout, peer=self.peer
        )
        if new is None:
            return
        self.transport = new
        log.info(logs.event("tls", client=self.peer, result="ok"))
        core.tls_started()
        early, self._early = bytes(self._early), bytearray()
        if early:
            core.receive_data(early)

    async def _update(self, event: events.Update) -> None:
        core = self.core
        maildrop = self.maildrop
        assert core is not None and maildrop is not None
        keys = [entry.key for entry in event.deleted]
        ok = True
        try:
            await asyncio.to_thread(self._commit, maildrop, keys)
        except (OSError, MailboxError) as e:
            ok = False
            log.error(
                logs.event(
                    "rejected",
                    client=self.peer,
                    user=core.username,
                    reason=f"update: {type(e).__name__}",
                )
            )
        finally:
            # Let go of the lock before the client hears +OK, so that
            # its next session (often at once) does not find it held.
            await asyncio.to_thread(self._release_maildrop)
            self._updating = False
        core.finish_update(ok)

    def _commit(self, maildrop: Maildrop, deleted: list[int]) -> None:
        # The UPDATE state (RFC 1939 §6), in a thread: remove what was
        # deleted, mark what was downloaded and kept as \Seen.
        if deleted:
            maildrop.remove(deleted)
            self._deleted = len(deleted)
        seen = self._retrieved.difference(deleted)
        if seen:
            maildrop.mark_seen(sorted(seen))

    def _release_maildrop(self) -> None:
        maildrop, self.maildrop = self.maildrop, None
        if maildrop is not None:
            maildrop.close()

    # ------------------------------------------------------------------
    # Policy and timeouts

    def _plaintext_allowed(self) -> bool:
        config = self.server.config.pop3
        if config.allow_plaintext_auth:
            return True
        if not config.loopback_is_secure:
            return False
        try:
            return ipaddress.ip_address(self.client_ip).is_loopback
        except ValueError:
            return False

    @property
    def _timeout(self) -> float:
        return self.server.config.pop3.idle_timeout

    def _arm_timer(self) -> None:
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + self._timeout
        self._timer = loop.call_at(self._deadline, self._check_timeout)

    def _check_timeout(self) -> None:
        # Input only moves the deadline; the timer catches up here.
        self._timer = None
        if self.transport is None:
            return
        loop = asyncio.get_running_loop()
        # Busy with a step, or held back by a client that reads our
        # answers slowly: neither is the client's silence.
        if self._deadline > loop.time() or self._busy or self._write_paused:
            self._timer = loop.call_at(
                max(self._deadline, loop.time() + 1.0), self._check_timeout
            )
            return
        # RFC 1939 §3: the autologout closes without a response.
        self._reason = "timeout"
        self.close(None)


def _summary(counter: Any) -> str:
    return ",".join(f"{verb.lower()}={n}" for verb, n in sorted(counter.items()))
