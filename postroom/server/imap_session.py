"""One IMAP connection: moves bytes between a transport and the core.

Built like the POP3 and SMTP sessions: an ``asyncio.Protocol`` whose
``data_received`` feeds the sans-I/O core (``protocol/imap``) and whose
``_pump`` takes the core's events one by one. An event is answered

* on the loop, when it is cheap (``ImapMailboxes.cheap``: a FETCH that
  sets no flag takes index rows from memory, and a thread hop would
  cost more than that; its files are read as the response streams);
* in a worker thread otherwise (SELECT, STORE, APPEND, COPY ...: they
  write SQLite with fsync, rename files, list directories), with
  reading paused until the answer is in. The core takes the answer in
  that thread too (nothing else touches it meanwhile), but a FETCH
  response past its first 64 KiB is rendered on the loop, as it is
  written (see Output);
* as a step of its own for LOGIN/AUTHENTICATE (``imap_login``: scrypt
  in a thread, failures slowed down) and STARTTLS (the handshake).

At most one storage call runs at a time (``_busy``): a ``Mailbox`` is
not for two threads, and the core takes one answer at a time anyway.

News. Before answering a command on the selected mailbox the storage
refreshes it (``ImapMailboxes.poll``) and the session hands the news to
the core (``update``), which sends EXISTS/EXPUNGE/FETCH FLAGS when RFC
3501 §7.4.1 allows. While a client IDLEs (RFC 2177), a task polls every
``imap.idle_poll_interval`` seconds: a refresh that finds nothing costs
two stats and one SQLite pragma, cheaper than keeping an inotify watch
per session, and it also sees changes made by other worker processes
and by the delivery process, which no in-process signal would.

Output goes out in one ``write`` per batch of commands (small writes
would each be a segment, with TCP_NODELAY); a response over 256 KiB
goes with ``writelines``, since the core hands message bodies as
``memoryview`` slices of the file's bytes and joining would copy them
again. Write flow control (``pause_writing``) stops the pump, and
reading, until the client has caught up.

A FETCH of many messages streams (``ImapConnection.streaming``): the
pump has the core render ``_STREAM_SLICE`` octets at a time and writes
each at once, so the client reads the first message while we load the
next ones, and memory holds a slice or two plus the transport's buffer
instead of the whole response. It stops at ``pause_writing`` and goes
on at ``resume_writing``; after ``_STREAM_TURN`` octets it lets the
other sessions have the loop. Message files are read on the loop then,
as POP3's RETR reads them: a read from the page cache costs about what
a thread hop would. Shutdown lets a streaming response end first (the
server aborts us after its grace period). XXX: a slice holds whole
messages, so a 40 MB message is in memory whole while it goes out;
reading files in pieces would need the core to render a literal in
pieces too, which no client of ours has needed yet.

Timeouts: one lazily moved timer. Before login ``imap.login_timeout``;
after, ``imap.idle_timeout`` (RFC 3501 §5.4: at least 30 minutes), also
while IDLE, which clients re-issue every 29 minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from postroom import logs
from postroom.errors import MailboxError
from postroom.protocol.imap import events as ev
from postroom.protocol.imap.connection import ImapConnection, ImapOptions
from postroom.protocol.imap.states import Mode, State
from postroom.server import tls
from postroom.server.imap_login import LoginGate, plaintext_allowed
from postroom.server.imap_mailbox import ImapMailboxes, MailboxGone, Result

if TYPE_CHECKING:
    from postroom.config import Listener
    from postroom.server.imapd import ImapServer

log = logging.getLogger(__name__)

# Bytes a client may send ahead while a step waits; then reading pauses.
_MAX_BUFFERED_WHILE_BUSY = 256 * 1024
# Output up to this size is joined into one write (see _flush).
_JOIN_LIMIT = 256 * 1024
# A streamed FETCH response: octets per write, and per turn of the loop.
_STREAM_SLICE = 128 * 1024
_STREAM_TURN = 1024 * 1024


class ImapSession(asyncio.Protocol):
    def __init__(self, server: ImapServer, listener: Listener) -> None:
        self.server = server
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.core: ImapConnection | None = None
        self.mailboxes: ImapMailboxes | None = None
        self.peer = ""
        self.client_ip = ""
        self.counter: Counter[str] = Counter()
        self._started = 0.0
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._idle_task: asyncio.Task[None] | None = None
        self._busy = False
        self._polling = False  # an IDLE refresh is running in a thread
        self._read_paused = False
        self._write_paused = False
        self._closing = False
        self._gate = LoginGate(
            server.config.imap, server.authenticator, server.store, ""
        )
        self._reason: str | None = None
        self._early = bytearray()
        self._stream_soon = False  # _stream_later is scheduled

    # ------------------------------------------------------------------
    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        assert self.transport is not None
        self._started = time.monotonic()
        peer = transport.get_extra_info("peername") or ("unknown", 0)
        self.client_ip = str(peer[0])
        self.peer = self._gate.peer = f"{peer[0]}:{peer[1]}"
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        server = self.server
        implicit = self.listener.kind == "imaps"
        log.info(logs.event("connect", client=self.peer, listener=self.listener.name))
        refusal = server.admit(self)
        if refusal is not None:
            # No conversation: RFC 3501 §7.1.5 lets the greeting be BYE.
            self._reason = "refused"
            self.transport.write(b"* BYE [UNAVAILABLE] " + refusal.encode() + b"\r\n")
            self.transport.close()
            return
        self.core = ImapConnection(
            ImapOptions(
                tls_available=server.tls_context is not None and not implicit,
                tls_active=implicit,
                login_without_tls=plaintext_allowed(server.config.imap, self.client_ip),
                max_literal=server.config.smtp.max_message_size,
                delimiter=".",  # Maildir++ (mailbox/names.py)
            )
        )
        self.core.greet()
        self._flush()
        self._arm_timer()

    def data_received(self, data: bytes) -> None:
        core = self.core
        if core is None:
            return
        if core.mode is Mode.TLS_PENDING:
            # Decrypted bytes can come with the handshake's last flight,
            # before _start_tls has told the core. Reading was paused
            # before our OK went out, so these are not cleartext
            # injected after STARTTLS; keep them until the core knows.
            self._early += data
            return
        core.receive_data(data)
        if not self._busy and not self._write_paused:
            self._pump()
        if core.buffered > _MAX_BUFFERED_WHILE_BUSY and (
            self._busy or self._write_paused or core.streaming
        ):
            self._pause_reading()
        self._deadline = asyncio.get_running_loop().time() + self._timeout

    def eof_received(self) -> bool:
        if self.core is not None:
            self.core.receive_data(b"")
            if not self._busy and not self._write_paused:
                self._pump()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._stop_idle()
        self.server.release(self)
        self.transport = None
        if not self._busy:
            # Else the running step still uses the mailbox; it lets go
            # when it is done (_step_done).
            self._release_mailboxes()
        core = self.core
        log.info(
            logs.event(
                "disconnect",
                client=self.peer,
                listener=self.listener.name,
                user=core.username if core is not None else None,
                duration=f"{time.monotonic() - self._started:.3f}",
                reason=self._reason,
                commands=_summary(self.counter) or None,
            )
        )

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
        if core is None:
            return
        while not self._write_paused and not self._busy:
            if core.streaming:
                if not self._stream():
                    return
                continue
            event = core.next_event()
            if event is ev.NEED_DATA:
                # Reading may have stopped while a response streamed.
                if self._read_paused and self.transport is not None:
                    self._read_paused = False
                    self.transport.resume_reading()
                break
            if event is ev.PAUSED:
                break
            assert not isinstance(event, ev._Sentinel)
            if isinstance(event, ev.Closed):
                self._flush()
                if self.transport is not None:
                    self.transport.close()
                return
            # The log's per-command counts: commands that reached us.
            self.counter[type(event).__name__.lower()] += 1
            if isinstance(event, ev.IdleDone):
                self._stop_idle()
            elif isinstance(event, ev.Login):
                self._spawn(self._login(event))
                return
            elif isinstance(event, ev.StartTls):
                # Reading stops before the OK leaves (CVE-2011-0411):
                # nothing sent after it may be read as cleartext.
                self._pause_reading()
                core.respond(ev.Done())
                self._spawn(self._start_tls())
                return
            elif self.mailboxes is None:  # pragma: no cover - core's job
                core.respond(ev.Refused("Log in first", bad=True))
            elif ImapMailboxes.cheap(event):
                try:
                    self._deliver(event, self._answer_now(event))
                except Exception as e:  # A bug of ours; see _internal_error.
                    self._internal_error(e)
                    return
            else:
                self._spawn(self._answer_later(event))
                return
        self._flush()

    def _stream(self) -> bool:
        """Write the next slices of a streamed FETCH response; False
        when the pump has to stop: the client is slow (it goes on at
        resume_writing), the turn is over (it goes on soon), or the
        connection is gone."""
        core = self.core
        transport = self.transport
        assert core is not None
        if transport is None or transport.is_closing():
            return False
        # Writing is progress: a long download is not an idle client.
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + self._timeout
        sent = 0
        while core.streaming:
            try:
                chunks = core.chunks_to_send(_STREAM_SLICE)
            except Exception as e:  # A file we cannot read, or a bug.
                self._internal_error(e)
                return False
            data = b"".join(chunks)
            transport.write(data)  # May call pause_writing.
            sent += len(data)
            if self._write_paused:
                return False
            if sent >= _STREAM_TURN and core.streaming:
                if not self._stream_soon:
                    self._stream_soon = True
                    loop.call_soon(self._stream_later)
                return False
        if self._closing:  # Shutdown waited for the response's end.
            self._reason = self._reason or "shutdown"
            self.close("[UNAVAILABLE] Server shutting down")
            return False
        return True

    def _stream_later(self) -> None:
        self._stream_soon = False
        self._resume()

    def _answer_now(self, event: ev.Event) -> Result | None:
        assert self.mailboxes is not None
        try:
            return self.mailboxes.answer(event)
        except MailboxGone:
            return None
        except (OSError, MailboxError) as e:
            self._log_failure(event, e)
            return None, ev.Refused("Mailbox unavailable", "UNAVAILABLE")

    async def _answer_later(self, event: ev.Event) -> None:
        gone = not await asyncio.to_thread(self._answer_blocking, event)
        if self.transport is None:
            return
        if gone:
            self._end_mailbox_gone()

    def _answer_blocking(self, event: ev.Event) -> bool:
        # In a worker thread. Reading is paused and the session is busy,
        # so nothing on the loop touches the core meanwhile, and the
        # core's rendering (a big FETCH reads and maybe parses every
        # message) is off the loop too. False: the mailbox is gone.
        result = self._answer_now(event)
        if result is None:
            return False
        self._apply(result)
        return True

    def _deliver(self, event: ev.Event, result: Result | None) -> None:
        if result is None:
            self._end_mailbox_gone()
            return
        self._apply(result)
        if isinstance(event, ev.Idle):
            self._start_idle()

    def _apply(self, result: Result) -> None:
        core = self.core
        assert core is not None
        news, answer = result
        if news is not None:
            core.update(news)
        core.respond(answer)

    def _end_mailbox_gone(self) -> None:
        self._reason = "mailbox-gone"
        self.close("[UNAVAILABLE] Mailbox was deleted or rebuilt elsewhere")

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
        if self.transport is None:
            self._release_mailboxes()
            return
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._internal_error(exc)
            return
        if self._closing and not (self.core is not None and self.core.streaming):
            self.close("[UNAVAILABLE] Server shutting down")
            return
        self._resume()

    def _internal_error(self, exc: BaseException) -> None:
        # Our own failure (a bug): log once, tell the client, hang up.
        # The session's state can no longer be trusted; others go on.
        log.error(
            logs.event(
                "rejected",
                client=self.peer,
                reason=f"internal: {type(exc).__name__}: {exc}",
            )
        )
        self._reason = "internal-error"
        self.close("[SERVERBUG] Internal error")

    def _resume(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing() or self._busy:
            return
        core = self.core
        if (
            self._read_paused
            and not self._write_paused
            and (core is None or core.buffered <= _MAX_BUFFERED_WHILE_BUSY)
        ):
            self._read_paused = False
            transport.resume_reading()
        self._pump()

    def _pause_reading(self) -> None:
        if not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()

    def _flush(self) -> None:
        core = self.core
        transport = self.transport
        if core is None:
            return
        chunks = core.chunks_to_send()
        if not chunks or transport is None or transport.is_closing():
            return
        # One write per batch: several small writes would go out as
        # several segments (TCP_NODELAY). Joining copies, so only the
        # small batches are joined; big bodies go out as they are.
        if len(chunks) == 1:
            transport.write(chunks[0])
        elif sum(map(len, chunks)) <= _JOIN_LIMIT:
            transport.write(b"".join(chunks))
        else:
            transport.writelines(chunks)

    def close(self, text: str) -> None:
        """Say ``* BYE text`` and hang up."""
        self._stop_idle()
        if self.core is None or self.transport is None:
            return
        self.core.close(text)
        self._flush()
        self.transport.close()

    def begin_shutdown(self) -> None:
        """Close now unless a step is in flight or a response streams;
        then when it is done (the server aborts us after its grace)."""
        self._closing = True
        streaming = self.core is not None and self.core.streaming
        if not self._busy and not streaming:
            self._reason = self._reason or "shutdown"
            self.close("[UNAVAILABLE] Server shutting down")

    def _release_mailboxes(self) -> None:
        mailboxes, self.mailboxes = self.mailboxes, None
        if mailboxes is not None:
            mailboxes.close()

    # ------------------------------------------------------------------
    # IDLE (RFC 2177)

    def _start_idle(self) -> None:
        loop = asyncio.get_running_loop()
        self._idle_task = loop.create_task(self._idle_poll())

    def _stop_idle(self) -> None:
        task, self._idle_task = self._idle_task, None
        # A poll running in a thread cannot be cancelled; the task sees
        # that it is no longer wanted when the poll returns.
        if task is not None and not self._polling:
            task.cancel()

    async def _idle_poll(self) -> None:
        interval = self.server.config.imap.idle_poll_interval
        while True:
            await asyncio.sleep(interval)
            core, mailboxes = self.core, self.mailboxes
            if core is None or mailboxes is None or self.transport is None:
                return
            if self._busy or core.mode is not Mode.IDLE:
                continue
            self._busy = self._polling = True
            try:
                news = await asyncio.to_thread(mailboxes.poll)
            except MailboxGone:
                self._busy = self._polling = False
                self._end_mailbox_gone()
                return
            except (OSError, MailboxError) as e:
                log.warning(
                    logs.event(
                        "rejected",
                        client=self.peer,
                        user=core.username,
                        reason=f"idle refresh: {type(e).__name__}",
                    )
                )
                news = None
            finally:
                self._busy = self._polling = False
            if self.transport is None:
                self._release_mailboxes()
                return
            if news is not None:
                core.update(news)
                self._flush()
            if self._closing:
                self.close("[UNAVAILABLE] Server shutting down")
                return
            # Input may have arrived (DONE) while we looked.
            self._resume()
            if self._idle_task is not asyncio.current_task():
                return

    # ------------------------------------------------------------------
    # LOGIN, AUTHENTICATE, STARTTLS

    async def _login(self, event: ev.Login) -> None:
        verdict = await self._gate.check(event)
        if self.transport is None:  # Gone while we waited.
            if verdict.mailboxes is not None:
                await asyncio.to_thread(verdict.mailboxes.close)
            return
        core = self.core
        assert core is not None
        self.mailboxes = verdict.mailboxes
        core.respond(verdict.answer)
        if verdict.hang_up:
            self._reason = "auth-failures"
            self.close("Too many authentication failures")
        # After login the longer autologout applies.
        self._deadline = asyncio.get_running_loop().time() + self._timeout

    async def _start_tls(self) -> None:
        core = self.core
        transport = self.transport
        context = self.server.tls_context
        assert core is not None and transport is not None and context is not None
        self._flush()
        new = await tls.start_server_tls(
            transport,
            self,
            context,
            timeout=self.server.config.imap.login_timeout,
            peer=self.peer,
        )
        if new is None:
            return
        self.transport = new
        log.info(logs.event("tls", client=self.peer, result="ok"))
        core.tls_started()
        early, self._early = bytes(self._early), bytearray()
        if early:
            core.receive_data(early)

    # ------------------------------------------------------------------
    # Policy and timeouts

    @property
    def _timeout(self) -> float:
        config = self.server.config.imap
        core = self.core
        if core is None or core.state is State.NOT_AUTHENTICATED:
            return config.login_timeout
        return config.idle_timeout

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
        if self._deadline > loop.time() or self._busy:
            self._timer = loop.call_at(
                max(self._deadline, loop.time() + 1.0), self._check_timeout
            )
            return
        # RFC 3501 §5.4: an autologout says BYE first (§7.1.5).
        self._reason = "timeout"
        self.close("Autologout; idle for too long")

    def _log_failure(self, event: ev.Event, error: Exception) -> None:
        log.error(
            logs.event(
                "rejected",
                client=self.peer,
                user=self.core.username if self.core is not None else None,
                command=type(event).__name__.lower(),
                reason=f"storage: {type(error).__name__}",
            )
        )


def _summary(counter: Counter[str]) -> str:
    return ",".join(f"{verb}={n}" for verb, n in sorted(counter.items()))
