"""One SMTP connection: moves bytes between a transport and the core.

The session is an ``asyncio.Protocol`` rather than a stream reader
coroutine: per-line coroutines are what cost aiosmtpd a factor of nine
in throughput (../shared/PERFORMANCE.md). ``data_received`` feeds the
core and ``_pump`` answers every event it can answer synchronously, so a
pipelined batch of commands costs one read and one write. Only four
things wait: storing a message (a callback on the spool's future, no
task), authenticating a stranger's message before that (SPF, DKIM,
DMARC: a task with a callback, ``postroom.mailauth.inbound``),
checking a password (scrypt in a thread, as a task) and the TLS
handshake (a task). While a message is checked or stored, input that
arrives is buffered in the core up to a bound, then reading pauses;
during AUTH and TLS reading pauses at once.

Timeouts (RFC 5321 §4.5.3.2) use one timer per connection that is moved
lazily: input only updates a deadline, and the timer re-arms itself when
it fires early, so a busy connection does not churn timer handles.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from typing import TYPE_CHECKING, Any

from postroom import ids, logs
from postroom.errors import AuthError, SpoolError
from postroom.protocol.smtp import events, replies
from postroom.protocol.smtp.events import NEED_DATA, PAUSED
from postroom.protocol.smtp.replies import Reply
from postroom.protocol.smtp.server import ServerConnection, ServerOptions, State
from postroom.queue.envelope import Envelope, Recipient
from postroom.server import received, tls

if TYPE_CHECKING:
    from postroom.config import Listener
    from postroom.mailauth.inbound import Outcome
    from postroom.server.smtpd import SmtpServer

log = logging.getLogger(__name__)

# Bytes a client may send ahead while a message is being stored.
_MAX_BUFFERED_WHILE_BUSY = 256 * 1024

ETRN_UNAVAILABLE = Reply.of(
    458, "4.3.0", "Unable to queue messages for node: delivery is not running"
)
ETRN_REFUSED = Reply.of(
    459, "4.7.1", "ETRN is only for trusted or authenticated clients"
)
ETRN_QUEUE_NAMES = Reply.of(
    458, "4.3.0", "Unable to queue messages: queue names (#) are not supported"
)
# RFC 3463 X.4.6: routing loop detected.
TOO_MANY_HOPS = Reply.of(554, "5.4.6", "Too many hops: mail forwarding loop")


class SmtpSession(asyncio.Protocol):
    __slots__ = (
        "server",
        "listener",
        "core",
        "transport",
        "peer",
        "client_ip",
        "trusted",
        "_deadline",
        "_timer",
        "_busy",
        "_closing",
        "_started",
        "_auth_failures",
        "_tls_info",
        "_reason",
        "_early",
        "_paused",
        "_checks",
    )

    def __init__(self, server: SmtpServer, listener: Listener) -> None:
        self.server = server
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.core: ServerConnection | None = None
        self.peer = ""
        self.client_ip = ""
        self.trusted = False
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._busy = False
        self._closing = False
        self._started = 0.0
        self._auth_failures = 0
        self._tls_info = ""
        self._reason: str | None = None
        self._early = bytearray()
        self._paused = False
        # Running mail authentication checks (at most one): asyncio
        # keeps only weak references to tasks.
        self._checks: set[asyncio.Task[Outcome]] = set()

    # ------------------------------------------------------------------
    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not inherit asyncio.Transport; duck-type.
        self.transport = transport  # type: ignore[assignment]
        self._started = time.monotonic()
        peer = transport.get_extra_info("peername") or ("unknown", 0)
        self.client_ip = str(peer[0])
        self.peer = f"{peer[0]}:{peer[1]}"
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Replies are written whole; never let Nagle hold them.
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        server = self.server
        config = server.config.smtp
        self.core = core = ServerConnection(
            ServerOptions(
                hostname=server.config.hostname,
                max_message_size=config.max_message_size,
                max_recipients=config.max_recipients,
                tls_available=server.tls_context is not None
                and self.listener.kind != "submissions",
                auth_enabled=server.authenticator is not None,
                auth_without_tls=config.auth_without_tls,
                bare_newlines=config.bare_newlines,
                undeclared_8bit=config.undeclared_8bit,
            )
        )
        if self.listener.kind == "submissions":
            core.tls_implicit()
            self._tls_info = _describe_tls(transport.get_extra_info("ssl_object"))

        refusal = server.admit(self)
        log.info(logs.event("connect", client=self.peer, listener=self.listener.name))
        if refusal is not None:
            core.greet(refusal)
            self._flush()
            transport.close()
            return
        self.trusted = server.policy.is_trusted(self.client_ip)
        core.greet(Reply.of(220, "", f"{server.config.hostname} ESMTP Postroom"))
        self._flush()
        self._arm_timer(config.command_timeout)

    def data_received(self, data: bytes) -> None:
        core = self.core
        assert core is not None
        if core.state is State.TLS_PENDING:
            # Decrypted bytes can arrive with the handshake's last flight,
            # before _start_tls has told the core. Reading was paused
            # before our 220 went out, so these cannot be cleartext
            # injected after STARTTLS (CVE-2011-0411); keep them for the
            # core until it knows TLS is up.
            self._early += data
            return
        core.receive_data(data)
        if not self._busy:
            self._pump()
        elif core.buffered > _MAX_BUFFERED_WHILE_BUSY:
            # A client may pipeline its next commands while we store a
            # message; one that floods instead waits in its own socket.
            self.transport.pause_reading()  # type: ignore[union-attr]
            self._paused = True
        self._extend_deadline()

    def eof_received(self) -> bool:
        assert self.core is not None
        self.core.receive_data(b"")
        if not self._busy:
            self._pump()
        # Keep the write side open for our last replies; TLS transports
        # cannot half-close, and asyncio warns when asked to.
        return not self.core.options.tls_active

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        core = self.core
        self.server.release(self)
        if core is None:
            return
        lost = core.state in (State.DATA, State.BDAT) or (
            core.transaction is not None and core.transaction.chunks is not None
        )
        log.info(
            logs.event(
                "disconnect",
                client=self.peer,
                listener=self.listener.name,
                helo=core.helo,
                messages=core.messages,
                duration=f"{time.monotonic() - self._started:.3f}",
                lost="message" if lost else None,
                reason=self._reason,
                commands=core.counter.summary() or None,
            )
        )
        self.transport = None

    # ------------------------------------------------------------------
    # The event loop of one conversation

    def _pump(self) -> None:
        core = self.core
        assert core is not None
        while True:
            event = core.next_event()
            if event is NEED_DATA:
                self._flush()
                if self._closing and not core.in_transaction:
                    self.close(replies.SHUTTING_DOWN)
                return
            if event is PAUSED:  # pragma: no cover - a driver bug
                raise AssertionError("core paused with no task running")
            if isinstance(event, events.Helo):
                core.respond(event.reply)
            elif isinstance(event, events.MailFrom):
                core.respond(self._mail_from(event))
            elif isinstance(event, events.RcptTo):
                core.respond(self._rcpt_to(event))
            elif isinstance(event, events.Message):
                if received.too_many_hops(event.content):
                    # RFC 5321 §6.3: a forwarding loop (an alias
                    # forwarding to an address that forwards back).
                    self._log_reject(TOO_MANY_HOPS, sender=str(event.sender))
                    core.respond(TOO_MANY_HOPS)
                elif self._verify(event) or self._store(event):
                    return
            elif isinstance(event, events.Auth):
                self._spawn(self._authenticate(event))
                return
            elif isinstance(event, events.StartTls):
                core.respond(replies.READY_TLS)
                self._spawn(self._start_tls())
                return
            elif isinstance(event, events.Vrfy):
                core.respond(
                    replies.CANNOT_VRFY
                    if self.server.config.smtp.vrfy == "cannot-verify"
                    else replies.VRFY_DISABLED
                )
            elif isinstance(event, events.Expn):
                core.respond(
                    replies.CANNOT_VRFY
                    if self.server.config.smtp.expn == "cannot-verify"
                    else replies.EXPN_DISABLED
                )
            elif isinstance(event, events.Etrn):
                self._etrn(core, event.argument)
            elif isinstance(event, events.Closed):
                self._flush()
                if self.transport is not None:
                    self.transport.close()
                return

    def _wait(self) -> None:
        """Hold off the core until the step in progress answers.

        Input that arrives meanwhile is buffered in the core (bounded, see
        data_received) rather than left in the socket: pausing and
        resuming the transport for every message costs two epoll_ctl
        calls, a visible share of a message's cost.
        """
        self._flush()
        self._busy = True

    def _resume(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._paused:
            self._paused = False
            transport.resume_reading()
        self._pump()

    def _etrn(self, core: ServerConnection, argument: str) -> None:
        """RFC 1985: make the node's waiting mail due now. Like Postfix,
        only clients we would relay for may ask: anyone else could use
        it to make us hammer a site with retries."""
        if not (self.trusted or core.authenticated_as):
            core.respond(ETRN_REFUSED)
            return
        if self.server.queue is None:
            core.respond(ETRN_UNAVAILABLE)
            return
        if argument.startswith("#"):
            core.respond(ETRN_QUEUE_NAMES)
            return
        # "@example.org" asks for subdomains too; we flush the domain
        # itself, which is what the recipients table can select.
        node = argument.lstrip("@").lower()
        self._spawn(self._flush_node(core, node))

    async def _flush_node(self, core: ServerConnection, node: str) -> None:
        assert self.server.queue is not None
        count = await asyncio.to_thread(self.server.queue.flush, None, node)
        if count:
            reply = Reply.of(
                253, "2.0.0", f"OK, {count} pending messages for node {node} started"
            )
        else:
            reply = Reply.of(251, "2.0.0", f"OK, no messages waiting for node {node}")
        core.respond(reply)

    def _spawn(self, coro: Any) -> None:
        """Run one awaiting step (AUTH check, TLS handshake) as a task.

        Reading stops outright here: during a TLS handshake the bytes in
        the socket belong to TLS, not to us.
        """
        self._wait()
        assert self.transport is not None
        self.transport.pause_reading()
        self._paused = True
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
            # Our own failure: log once, answer 451 if we still can, and
            # keep the server up for everyone else.
            log.error("session failure client=%s error=%r", self.peer, exc)
            if self.core is not None and self.core.awaiting_answer:
                self.core.respond(replies.TRANSACTION_FAILED)
        self._resume()

    def _flush(self) -> None:
        assert self.core is not None
        out = self.core.data_to_send()
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out)

    def close(self, reply: Reply) -> None:
        """Say *reply* (421) and hang up; used by timeouts and shutdown."""
        if self.core is None or self.transport is None:
            return
        self.core.close(reply)
        self._flush()
        self.transport.close()

    def begin_shutdown(self) -> None:
        """Finish the transaction in flight, then close with 421."""
        self._closing = True
        if self.core is not None and not self.core.in_transaction and not self._busy:
            self.close(replies.SHUTTING_DOWN)

    # ------------------------------------------------------------------
    # Answers that need policy

    def _mail_from(self, event: events.MailFrom) -> Reply:
        if self._closing:
            return replies.SHUTTING_DOWN
        assert self.core is not None
        refusal = self.server.policy.check_sender(
            self.listener.kind, self.core.authenticated_as is not None
        )
        if refusal is not None:
            self._log_reject(refusal, sender=str(event.sender))
            return refusal
        return replies.SENDER_OK

    def _rcpt_to(self, event: events.RcptTo) -> Reply:
        assert self.core is not None
        refusal = self.server.policy.check_recipient(
            event.recipient,
            listener_kind=self.listener.kind,
            authenticated=self.core.authenticated_as is not None,
            trusted=self.trusted,
        )
        if refusal is not None:
            self._log_reject(refusal, to=str(event.recipient))
            return refusal
        return replies.RECIPIENT_OK

    def _log_reject(self, reply: Reply, **fields: str) -> None:
        log.info(logs.event("rejected", client=self.peer, reply=str(reply), **fields))

    # ------------------------------------------------------------------
    # The waits

    def _verify(self, event: events.Message) -> bool:
        """Authenticate a stranger's message (SPF, DKIM, DMARC) before
        it is stored; True if the answer must wait, and then
        ``_verified`` gives it. Costs one test when the checks are off.
        """
        checker = self.server.mailauth
        core = self.core
        assert core is not None
        if checker is None or not checker.applies(
            self.listener.kind,
            trusted=self.trusted,
            authenticated=core.authenticated_as is not None,
        ):
            return False
        task = asyncio.get_running_loop().create_task(
            checker.check(
                event.content,
                client_ip=self.client_ip,
                sender=str(event.sender),
                helo=core.helo or "",
            )
        )
        self._wait()
        self._checks.add(task)
        task.add_done_callback(lambda done: self._verified(event, done))
        return True

    def _verified(self, event: events.Message, task: asyncio.Task[Outcome]) -> None:
        self._checks.discard(task)
        self._busy = False
        core = self.core
        if task.cancelled() or core is None or self.transport is None:
            # Cancelled, or the client is gone: it never heard 250, so
            # it will send again; storing now would make a duplicate.
            return
        error = task.exception()
        if error is not None:
            # Our own failure: answer 451, as for any failed step.
            log.error(
                logs.event("rejected", client=self.peer, reason=f"mailauth: {error!r}")
            )
            core.respond(replies.TRANSACTION_FAILED)
        elif (outcome := task.result()).refusal is not None:
            log.info(
                logs.event(
                    "rejected",
                    client=self.peer,
                    reply=str(outcome.refusal),
                    sender=f"<{event.sender}>",
                    **outcome.verdict.log_fields(),
                )
            )
            core.respond(outcome.refusal)
        elif self._store(event, outcome):
            return
        self._resume()

    def _store(self, event: events.Message, outcome: Outcome | None = None) -> bool:
        """Hand the message to the spool; True if the answer must wait.

        No task per message: the spool's future gets a callback, which
        answers and pumps on. That is a good part of our per-message cost
        saved at thousands of messages a second.
        """
        core = self.core
        assert core is not None
        # Quotas at end of data (RFC 5321 §4.5.3.1.10): 452 when the
        # message fits none of its mailboxes.
        full = self.server.policy.check_message(
            [addr for addr, _params in event.recipients], len(event.content)
        )
        if full is not None:
            self._log_reject(full, sender=str(event.sender))
            core.respond(full)
            return False
        queue_id = ids.new_queue_id()
        now = time.time()
        params = event.mail_params
        protocol = received.protocol_name(
            esmtp=core.esmtp,
            tls=core.options.tls_active,
            auth=core.authenticated_as is not None,
            utf8=params.smtputf8,
        )
        header = received.header(
            utf8=params.smtputf8,
            helo=core.helo or "",
            client_ip=self.client_ip,
            hostname=self.server.config.hostname,
            protocol=protocol,
            queue_id=queue_id,
            tls=self._tls_info,
            now=now,
            recipient=str(event.recipients[0][0])
            if len(event.recipients) == 1
            else None,
        )
        if self.listener.kind != "relay" or core.authenticated_as is not None:
            # Submission (RFC 6409 §8): complete the message. Never for
            # a relayed one, which must arrive as its sender wrote it.
            header += received.missing_fields(
                event.content,
                queue_id=queue_id,
                hostname=self.server.config.hostname,
                now=now,
            )
        if outcome is None:
            content = header + event.content
        else:
            # RFC 8601 §5: our verdict on top, forgeries of it gone.
            content = header + outcome.header + outcome.content
            log.info(
                logs.event(
                    "auth",
                    queue_id,
                    **outcome.verdict.log_fields(),
                    removed=outcome.removed or None,
                    client=self.peer,
                )
            )
        envelope = Envelope(
            queue_id=queue_id,
            sender=str(event.sender),
            # Aliases become their targets here (postroom/mailbox/addressing.py).
            recipients=self.server.policy.expand(
                [Recipient(str(a), p.notify, p.orcpt) for a, p in event.recipients]
            ),
            received_at=now,
            body=params.body,
            smtputf8=params.smtputf8,
            ret=params.ret,
            envid=params.envid,
            requiretls=params.requiretls,
            declared_size=params.size,
            client_address=self.client_ip,
            client_helo=core.helo or "",
            auth_user=core.authenticated_as,
            listener=self.listener.name,
            tls=self._tls_info,
            auth_results=None if outcome is None else outcome.verdict.summary(),
        )
        try:
            future = self.server.spool.submit(envelope, content)
        except SpoolError as e:
            self._store_failed(queue_id, e)
            return False

        def stored(future: asyncio.Future[None]) -> None:
            self._busy = False
            error = None if future.cancelled() else future.exception()
            if error is not None:
                self._store_failed(queue_id, error)
            else:
                self._log_received(envelope, len(content), protocol)
                core.respond(Reply.of(250, "2.0.0", f"Ok: queued as {queue_id}"))
            self._resume()

        self._wait()
        future.add_done_callback(stored)
        return True

    def _store_failed(self, queue_id: str, error: BaseException) -> None:
        assert self.core is not None
        log.error(
            logs.event("rejected", queue_id, client=self.peer, reason=f"spool: {error}")
        )
        self.core.respond(replies.TRANSACTION_FAILED)

    def _log_received(self, envelope: Envelope, size: int, protocol: str) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        log.info(
            logs.event(
                "received",
                envelope.queue_id,
                client=self.peer,
                helo=envelope.client_helo,
                sender=f"<{envelope.sender}>",
                size=size,
                nrcpt=len(envelope.recipients),
                proto=protocol,
                auth=envelope.auth_user,
                tls=envelope.tls or None,
                listener=self.listener.name,
            )
        )

    async def _authenticate(self, event: events.Auth) -> None:
        core = self.core
        authenticator = self.server.authenticator
        assert core is not None and authenticator is not None
        try:
            good = await authenticator.verify(event.username, event.password)
        except AuthError as e:
            log.error(
                logs.event(
                    "auth",
                    client=self.peer,
                    user=event.username,
                    result="error",
                    error=str(e),
                )
            )
            core.respond(replies.AUTH_TEMPORARY)
            return
        if good:
            log.info(
                logs.event(
                    "auth",
                    client=self.peer,
                    user=event.username,
                    mechanism=event.mechanism,
                    result="ok",
                )
            )
            core.respond(replies.AUTH_OK)
            return
        self._auth_failures += 1
        config = self.server.config.smtp
        log.warning(
            logs.event(
                "auth",
                client=self.peer,
                user=event.username,
                mechanism=event.mechanism,
                result="failed",
                failures=self._auth_failures,
            )
        )
        # Slow down guessing: 1 s, 2 s, 4 s ... before each refusal.
        await asyncio.sleep(config.auth_failure_delay * 2 ** (self._auth_failures - 1))
        core.respond(replies.AUTH_FAILED)
        if self._auth_failures >= config.auth_max_failures:
            self.close(replies.TOO_MANY_AUTH_FAILURES)

    async def _start_tls(self) -> None:
        core = self.core
        transport = self.transport
        context = self.server.tls_context
        assert core is not None and transport is not None and context is not None
        new = await tls.start_server_tls(
            transport,
            self,
            context,
            timeout=self.server.config.smtp.command_timeout,
            peer=self.peer,
        )
        if new is None:
            return
        self.transport = new
        self._tls_info = _describe_tls(new.get_extra_info("ssl_object"))
        log.info(logs.event("tls", client=self.peer, result="ok", tls=self._tls_info))
        core.tls_started()
        early, self._early = bytes(self._early), bytearray()
        if early:
            core.receive_data(early)

    # ------------------------------------------------------------------
    # Timeouts

    def _arm_timer(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + timeout
        self._timer = loop.call_at(self._deadline, self._check_timeout)

    def _extend_deadline(self) -> None:
        """Input arrived: the peer has a full timeout again, the one for
        the state we are now in (RFC 5321 §4.5.3.2: data blocks and
        commands have different ones)."""
        core = self.core
        if core is None or self.transport is None:
            return
        config = self.server.config.smtp
        timeout = (
            config.data_timeout
            if core.state in (State.DATA, State.BDAT)
            else config.command_timeout
        )
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + timeout
        # The timer may fire early (it re-arms itself), never late.
        if self._timer is None or self._timer.when() > self._deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_at(self._deadline, self._check_timeout)

    def _check_timeout(self) -> None:
        self._timer = None
        if self.transport is None:
            return
        loop = asyncio.get_running_loop()
        if self._deadline > loop.time() or self._busy:
            self._timer = loop.call_at(
                max(self._deadline, loop.time() + 1.0), self._check_timeout
            )
            return
        self._reason = "timeout"
        self.close(replies.TIMEOUT)


def _describe_tls(ssl_object: Any) -> str:
    if ssl_object is None:
        return ""
    cipher = ssl_object.cipher()
    return f"{ssl_object.version()} {cipher[0] if cipher else ''}".strip()
