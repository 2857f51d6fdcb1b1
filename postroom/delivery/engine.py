"""The delivery engine: Postroom's queue manager.

Theory of operation
-------------------
The queue tables are the schedule. Every recipient row has a state and
the time it is next due (``store/queue.py``); the spool writes new ones
due at their arrival. The engine polls (``tick``) for due recipients of
queued messages, takes them (state ``active``, in the same transaction)
and sorts them into one in-memory queue per *destination*: the
recipient domain in ASCII, lower case (``Router.destination``).

A destination's queue is drained by connection tasks, as many at a time
as its limits allow (``limits.py``: connections at once, messages per
connection, recipients per transaction, messages and connections per
minute or hour; presets for the big providers) and as the global
``delivery.max_connections`` allows. A task resolves the route once,
connects (the client tries each MX in turn), then takes the queue's
jobs one at a time: one job is one message's recipients at this
destination, sent in as many transactions as the recipient limit needs.
Local destinations are written to Maildirs instead, on a thread.

Each transaction's per-recipient results are *settled*:

- delivered: final. If the destination had deferred recipients, they
  are made due now: the site is answering again.
- bounced (5xx, or a routing answer such as a null MX): final, and the
  sender gets an RFC 3464 notice unless NOTIFY forbids it or the sender
  is the null sender.
- deferred (4xx, no answer at all): due again after an exponential
  backoff with jitter, from ``retry_first`` up to ``retry_max``; once the
  message is older than ``expire_after`` it is bounced instead
  ("expired"); past ``delay_warning_after`` the sender is told once that
  it is delayed, when NOTIFY allows.

A notice is committed to the spool (durable) *before* the recipient's
final state is recorded, so a crash between the two sends it twice
rather than never. The states, an ``attempts`` row and an event per
recipient (``ledger.record``) are written in one batch per turn of the
event loop; a message with no pending recipient left is ``removed``.

At-least-once: a recipient is recorded delivered only after the remote
server's 250. If the process dies between that reply and the write
(about a millisecond), the recipient is still ``active`` and the next
engine sends it again. SMTP gives no way to close that window (RFC 1047).

One engine per database: ``start`` returns every ``active`` recipient to
the queue, which would steal from a second engine. Cluster mode will
need leases; see docs/known-issues.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import sqlalchemy as sa

from postroom import events, ids, logs
from postroom.clock import Clock
from postroom.config import Config
from postroom.delivery import ledger
from postroom.delivery.ledger import Change, DueMessage, DueRecipient
from postroom.delivery.limits import LimitBook, Limits, Throttle
from postroom.delivery.outcome import (
    BOUNCED,
    DELIVERED,
    LOCAL,
    DeliveryError,
    Peer,
    Result,
    Route,
)
from postroom.protocol.smtp.client import Capabilities
from postroom.protocol.smtp.replies import Reply
from postroom.queue.envelope import Envelope, Recipient
from postroom.queue.journal import read_record
from postroom.store import queue as tables

log = logging.getLogger("postroom.delivery")

# Recipients held in memory at once (taken, not yet settled): Postfix's
# qmgr_message_recipient_limit plays this part.
MAX_ACTIVE = 20_000
# A destination whose rate limit says "wait" longer than this gives its
# connection up and is looked at again when the wait is over.
MAX_THROTTLE_WAIT = 2.0
# Seconds results wait to be written with others (see ``_record``).
FLUSH_DELAY = 0.005
# Records longer than this are read on a thread; shorter ones cost less
# to read (one pread from the page cache) than a thread hand-off.
READ_IN_THREAD = 256 * 1024


class Client(Protocol):
    """What the engine needs of an SMTP connection (delivery/smtp.py)."""

    peer: Peer
    tls: str
    messages_sent: int
    capabilities: Capabilities

    @property
    def usable(self) -> bool: ...

    async def send(
        self, envelope: Envelope, recipients: Sequence[Recipient], content: bytes
    ) -> list[Result]: ...

    async def close(self) -> None: ...


Connect = Callable[[Route], Awaitable[Client]]


class RouterLike(Protocol):
    def destination(self, domain: str) -> str: ...

    async def route(self, domain: str) -> Route: ...


class Submitter(Protocol):
    """Where notices go: ``Spool.submit``."""

    def submit(self, envelope: Envelope, content: bytes) -> asyncio.Future[None]: ...


LocalDeliver = Callable[[Envelope, Recipient, bytes], Result]
Sign = Callable[[bytes], bytes]


@dataclass(slots=True)
class Job:
    """One message's due recipients at one destination."""

    message: DueMessage
    recipients: list[DueRecipient]


@dataclass(slots=True)
class Destination:
    name: str
    domain: str  # a domain to route by (the first one seen)
    limits: Limits
    throttle: Throttle
    jobs: deque[Job] = field(default_factory=deque)
    connections: int = 0
    not_before: float = 0.0
    # Raw domains (as stored in recipients.domain) that map here, for
    # waking their deferred recipients. A destination is forgotten when
    # idle, so a new one may have deferred recipients from before: it
    # checks at its first delivery.
    domains: set[str] = field(default_factory=set)
    had_deferrals: bool = True


class DeliveryEngine:
    """See the module docstring. *connect* opens a client for a route,
    *local* writes one recipient's copy to its mailbox, *sign* adds DKIM
    signatures, *notices* takes the DSNs the engine writes."""

    def __init__(
        self,
        config: Config,
        db: sa.Engine,
        *,
        router: RouterLike,
        connect: Connect,
        notices: Submitter | None,
        local: LocalDeliver | None = None,
        sign: Sign | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._config = config
        self._delivery = config.delivery
        self._db = db
        self._router = router
        self._connect = connect
        self._notices = notices
        self._local = local
        self._sign = sign
        self._clock = clock or Clock()
        self._rng = rng or random.Random()
        self._spool_dir = config.spool_path
        self._book = LimitBook(config.delivery)
        self._dests: dict[str, Destination] = {}
        self._active = 0  # recipients taken, not yet settled
        self._connections = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._changes: list[Change] = []
        self._complete: list[str] = []
        self._flush_scheduled = False
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self.settled = 0  # recipients settled since start (tests, metrics)

    # -- life cycle -----------------------------------------------------

    async def start(self) -> None:
        """Return recipients a previous engine had taken, then poll."""
        with self._db.begin() as conn:
            count = ledger.reset_active(conn)
        if count:
            log.info("delivery: %d recipients taken before a restart are due", count)
        self._loop_task = asyncio.create_task(self._run(), name="delivery")

    async def stop(self, grace: float = 10.0) -> None:
        """Stop taking work; let connections finish for up to *grace*
        seconds, then cut them (their recipients stay ``active`` and are
        due again at the next start)."""
        self._stopping = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        self._flush()

    def poke(self) -> None:
        """Poll now rather than at the next interval."""
        self._wake.set()

    async def _run(self) -> None:
        interval = self._delivery.poll_interval
        while not self._stopping:
            try:
                taken = self.tick()
            except sa.exc.OperationalError as e:  # database busy or gone
                log.error("delivery: cannot read the queue: %s", e)
                taken = 0
            if taken and self._active < MAX_ACTIVE // 2:
                await asyncio.sleep(0)
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)

    # -- taking work ------------------------------------------------------

    def tick(self) -> int:
        """Take due recipients and start connections; return how many
        recipients were taken. Tests call this after moving the clock."""
        now = self._clock.time()
        taken = 0
        room = MAX_ACTIVE - self._active
        if room > 0 and not self._stopping:
            with self._db.begin() as conn:
                messages = ledger.take_due(conn, now, min(room, 2000))
            for message in messages:
                taken += len(message.recipients)
                self._enqueue(message)
            self._active += taken
        self._dispatch(now)
        return taken

    async def run_until_idle(self, timeout: float = 30.0) -> None:
        """Tick and wait until nothing is due and nothing is in flight
        (for tests, with a fake clock)."""
        deadline = time.monotonic() + timeout
        while True:
            taken = self.tick()
            if self._tasks:
                await asyncio.wait(
                    set(self._tasks), timeout=deadline - time.monotonic()
                )
            else:
                await asyncio.sleep(0)
            self._flush()
            if not taken and not self._tasks and not self._pending_throttled():
                return
            if time.monotonic() > deadline:
                raise TimeoutError("delivery did not become idle")

    def _pending_throttled(self) -> bool:
        now = self._clock.time()
        return any(d.jobs and d.not_before <= now for d in self._dests.values())

    def _enqueue(self, message: DueMessage) -> None:
        by_dest: dict[str, list[DueRecipient]] = {}
        bounce = [r for r in message.recipients if r.bounce_now]
        if bounce:
            self._spawn(self._bounce_by_admin(message, bounce))
        for rcpt in message.recipients:
            if rcpt.bounce_now:
                continue
            by_dest.setdefault(self._router.destination(rcpt.domain), []).append(rcpt)
        for name, rcpts in by_dest.items():
            dest = self._dests.get(name)
            if dest is None:
                limits = self._book.limits(name)
                dest = Destination(
                    name=name,
                    domain=rcpts[0].domain,
                    limits=limits,
                    throttle=Throttle(limits, self._clock.time),
                )
                self._dests[name] = dest
            dest.domains.update(r.domain for r in rcpts)
            dest.jobs.append(Job(message, rcpts))

    def _dispatch(self, now: float) -> None:
        """Start connection tasks where jobs wait and limits allow."""
        for dest in list(self._dests.values()):
            if not dest.jobs:
                if not dest.connections and not _has_rates(dest.limits):
                    del self._dests[dest.name]
                continue
            if dest.not_before > now:
                continue
            # One connection per waiting job, up to the limit: a
            # transaction waits for the remote server most of its time,
            # so parallel connections are what make a queue drain fast
            # (Postfix opens up to its concurrency limit the same way).
            wanted = min(dest.limits.max_connections, len(dest.jobs))
            while (
                dest.connections < wanted
                and self._connections < self._delivery.max_connections
            ):
                wait = dest.throttle.connection_wait()
                if wait > 0:
                    dest.not_before = now + wait
                    self._wake_later(wait)
                    break
                dest.throttle.take_connection()
                dest.connections += 1
                self._connections += 1
                self._spawn(self._drain(dest))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _bounce_by_admin(
        self, message: DueMessage, rcpts: list[DueRecipient]
    ) -> None:
        reply = Reply.of(550, "5.0.0", "returned to sender by the administrator")
        result = Result(BOUNCED, reply, None, "other")
        dest = Destination(
            name="admin",
            domain="",
            limits=self._book.limits(""),
            throttle=Throttle(self._book.limits(""), self._clock.time),
        )
        await self._settle(
            dest, message, rcpts, [result] * len(rcpts), time.monotonic()
        )

    def _wake_later(self, delay: float) -> None:
        asyncio.get_running_loop().call_later(min(delay, 60.0), self._wake.set)

    # -- one connection's worth of work ---------------------------------

    async def _drain(self, dest: Destination) -> None:
        try:
            await self._drain_jobs(dest)
        except Exception:
            log.exception("delivery: connection task for %s failed", dest.name)
            # Whatever it held goes back, deferred: never lost, never stuck.
            reply = Reply.of(451, "4.3.0", "internal error in delivery")
            await self._fail_all(dest, DeliveryError(reply))
        finally:
            dest.connections -= 1
            self._connections -= 1
            if not self._stopping:
                self._dispatch(self._clock.time())

    async def _drain_jobs(self, dest: Destination) -> None:
        try:
            route = await self._router.route(dest.domain)
        except DeliveryError as e:
            await self._fail_all(dest, e)
            return
        if route.transport == LOCAL:
            await self._drain_local(dest)
            return
        try:
            client = await self._connect(route)
        except DeliveryError as e:
            # The client tried every host and address of the route: the
            # destination is down for now, so everything waiting for it
            # is deferred (or bounced) alike, as Postfix does with a
            # dead site, rather than each job trying again at once.
            await self._fail_all(dest, e)
            return
        try:
            await self._send_jobs(dest, client)
        finally:
            with contextlib.suppress(Exception):
                await client.close()

    async def _send_jobs(self, dest: Destination, client: Client) -> None:
        limits = dest.limits
        while dest.jobs and client.usable and not self._stopping:
            if client.messages_sent >= limits.max_messages_per_connection:
                return
            wait = dest.throttle.message_wait()
            if wait > 0:
                if wait > MAX_THROTTLE_WAIT:
                    dest.not_before = self._clock.time() + wait
                    self._wake_later(wait)
                    return
                await asyncio.sleep(wait)
                continue
            # The token is taken before anything awaits, so that parallel
            # connections cannot all see the same one free.
            dest.throttle.take_message()
            job = dest.jobs.popleft()
            content = await self._content(job.message)
            rcpts = job.recipients
            step = limits.max_recipients_per_message
            for start in range(0, len(rcpts), step):
                chunk = rcpts[start : start + step]
                if start:
                    dest.throttle.take_message()  # each transaction counts
                if not client.usable:
                    reply = Reply.of(451, "4.4.2", "connection lost before sending")
                    results = [Result("deferred", reply, client.peer, "network")]
                    await self._settle(
                        dest, job.message, chunk, results * len(chunk), time.monotonic()
                    )
                    continue
                began = time.monotonic()
                results = await client.send(
                    job.message.envelope, [r.recipient for r in chunk], content
                )
                await self._settle(
                    dest,
                    job.message,
                    chunk,
                    results,
                    began,
                    tls=client.tls,
                    success=None if client.capabilities.dsn else "relayed",
                )

    async def _drain_local(self, dest: Destination) -> None:
        while dest.jobs and not self._stopping:
            job = dest.jobs.popleft()
            content = await self._content(job.message, sign=False)
            for rcpt in job.recipients:
                began = time.monotonic()
                if self._local is None:
                    reply = Reply.of(451, "4.3.5", "local delivery is not configured")
                    result = Result("deferred", reply, None, "other")
                else:
                    result = await asyncio.to_thread(
                        self._local, job.message.envelope, rcpt.recipient, content
                    )
                await self._settle(
                    dest, job.message, [rcpt], [result], began, success="delivered"
                )

    async def _fail_all(self, dest: Destination, error: DeliveryError) -> None:
        while dest.jobs:
            await self._fail_job(dest, dest.jobs.popleft(), error)

    async def _fail_job(
        self, dest: Destination, job: Job, error: DeliveryError
    ) -> None:
        status = BOUNCED if error.permanent else "deferred"
        result = Result(status, error.reply, error.peer, _classify(error.reply))
        await self._settle(
            dest,
            job.message,
            job.recipients,
            [result] * len(job.recipients),
            time.monotonic(),
        )

    async def _content(self, message: DueMessage, *, sign: bool = True) -> bytes:
        content: bytes
        if message.content is not None:
            content = message.content
        else:
            where = (
                self._spool_dir,
                message.spool,
                message.segment,
                message.offset,
                message.length,
            )
            if message.length > READ_IN_THREAD:
                _env, content = await asyncio.to_thread(read_record, *where)
            else:
                _env, content = read_record(*where)
            message.content = content
        if sign and self._sign is not None:
            signed = message.signed
            if signed is None:
                signed = message.signed = self._sign(content)
            return signed
        return content

    # -- settling results --------------------------------------------------

    async def _settle(
        self,
        dest: Destination,
        message: DueMessage,
        rcpts: Sequence[DueRecipient],
        results: Sequence[Result],
        began: float,
        *,
        tls: str = "",
        success: str | None = None,
    ) -> None:
        """Record what *results* say of *rcpts* (see the module
        docstring). *success* is the RFC 3464 action to report to a
        sender who asked for NOTIFY=SUCCESS: "delivered" for a local
        mailbox, "relayed" when the next hop did not take DSN parameters
        (so will not report it), None when it did."""
        now = self._clock.time()
        duration = time.monotonic() - began
        # A scheduled message ages from its send time, not its arrival.
        age = now - max(message.received_at, message.envelope.not_before)
        meta = events.meta_of(message.envelope)
        changes: list[Change] = []
        failed: list[tuple[DueRecipient, Result]] = []
        delayed: list[tuple[DueRecipient, Result]] = []
        delivered_any = False
        for rcpt, result in zip(rcpts, results, strict=True):
            attempt_no = rcpt.attempts + 1
            state = result.status
            next_attempt = now
            expired = False
            if state == DELIVERED:
                delivered_any = True
                if success and _wants(message.envelope, rcpt.recipient, "success"):
                    message.succeeded.append((rcpt, result, success))
            elif state == BOUNCED:
                failed.append((rcpt, result))
            else:
                state = tables.DEFERRED
                dest.had_deferrals = True
                if age >= self._delivery.expire_after:
                    state, expired = BOUNCED, True
                    failed.append((rcpt, result))
                else:
                    next_attempt = now + self._backoff(attempt_no)
                    if (
                        not rcpt.warned
                        and age >= self._delivery.delay_warning_after
                        and _wants(message.envelope, rcpt.recipient, "delay")
                    ):
                        delayed.append((rcpt, result))
            reply = result.reply
            peer = result.peer
            failure = "" if state == DELIVERED else result.failure or _classify(reply)
            changes.append(
                Change(
                    queue_id=message.queue_id,
                    idx=rcpt.idx,
                    state=state,
                    next_attempt=next_attempt,
                    attempts=attempt_no,
                    warned=rcpt.warned,
                    last_reply=str(reply),
                    attempt={
                        "attempt": attempt_no,
                        "started_at": now - duration,
                        "duration": duration,
                        "status": state,
                        "failure": failure,
                        "remote_host": peer.host if peer else None,
                        "remote_ip": peer.address if peer else None,
                        "remote_port": peer.port if peer else None,
                        "code": reply.code,
                        "enhanced": reply.enhanced,
                        "reply": "\n".join(reply.lines),
                        "tls": tls,
                    },
                    address=rcpt.recipient.address,
                    meta=meta,
                )
            )
            log.info(
                logs.event(
                    "expired" if expired else state,
                    message.queue_id,
                    to=f"<{rcpt.recipient.address}>",
                    relay=str(peer) if peer else dest.name,
                    attempt=attempt_no,
                    delay=f"{age:.2f}",
                    dsn=reply.enhanced or None,
                    status=f"{reply.code} {reply.text}",
                    failure=failure or None,
                )
            )

        if delivered_any and dest.had_deferrals:
            dest.had_deferrals = False
            with self._db.begin() as conn:
                woken = ledger.wake(conn, dest.domains, now)
            if woken:
                log.info(
                    "delivery: %s answers again; %d recipients due", dest.name, woken
                )
                self.poke()

        # Recipients that need a notice wait for the rest of the message's
        # pass, so that the sender gets one report per message (as from
        # Postfix), not one per destination; they stay ``active`` until
        # the notice is safely stored.
        noticed = {r.idx for r, _ in failed} | {r.idx for r, _ in delayed}
        message.failed += failed
        message.delayed += delayed
        message.held += [c for c in changes if c.idx in noticed]
        message.unsettled -= len(rcpts)
        message.deferred += sum(1 for c in changes if c.state == tables.DEFERRED)
        self._record(message, [c for c in changes if c.idx not in noticed], len(rcpts))
        if message.unsettled <= 0 and (message.held or message.succeeded):
            await self._send_notices(message, now)

    async def _send_notices(self, message: DueMessage, now: float) -> None:
        """Store the failure and delay notices of a message's pass, then
        record the recipients they are about."""
        changes, message.held = message.held, []
        failed, message.failed = message.failed, []
        delayed, message.delayed = message.delayed, []
        succeeded, message.succeeded = message.succeeded, []
        # XXX: success notices are not held back like the others: the
        # recipients are already recorded delivered, so a crash here
        # loses the notice (never the message); RFC 3461 asks no more.
        for action in ("delivered", "relayed"):
            items = [(r, res) for r, res, a in succeeded if a == action]
            if items:
                await self._notify(message, items, "success", now, action=action)
        if failed and not await self._notify(message, failed, "failure", now):
            # The notice could not be stored: keep the recipients and try
            # again later rather than bounce without telling anyone.
            for change in changes:
                if change.state == BOUNCED:
                    change.state = tables.DEFERRED
                    change.next_attempt = now + self._delivery.retry_first
                    message.deferred += 1
        if delayed and await self._notify(message, delayed, "delay", now):
            warned = {r.idx for r, _ in delayed}
            for change in changes:
                if change.idx in warned:
                    change.warned = True
        self._record(message, changes, 0)

    def _backoff(self, attempt: int) -> float:
        base = min(
            self._delivery.retry_max,
            self._delivery.retry_first * 2.0 ** min(attempt - 1, 30),
        )
        jitter = self._delivery.retry_jitter
        return base * (1 + self._rng.uniform(-jitter, jitter))

    def _record(self, message: DueMessage, changes: list[Change], settled: int) -> None:
        """Queue *changes* for the next batch write. A message whose
        recipients all came in this pass and are all final is known
        complete, which spares the write a query."""
        self._changes += changes
        self._active -= settled
        self.settled += settled
        if (
            message.unsettled <= 0
            and not message.held
            and not message.deferred
            and len(message.recipients) == len(message.envelope.recipients)
        ):
            self._complete.append(message.queue_id)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            # A short pause lets results of concurrent connections share
            # one transaction (the spool's group commit, on this side).
            asyncio.get_running_loop().call_later(FLUSH_DELAY, self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        changes, self._changes = self._changes, []
        complete, self._complete = self._complete, []
        if not changes:
            return
        with self._db.begin() as conn:
            removed = ledger.record(conn, changes, complete)
        for queue_id in removed:
            log.info(logs.event("removed", queue_id))

    # -- notices (RFC 3464) ------------------------------------------------

    async def _notify(
        self,
        message: DueMessage,
        items: Sequence[tuple[DueRecipient, Result]],
        kind: str,
        now: float,
        *,
        action: str | None = None,
    ) -> bool:
        """Store a notice of *kind* about *items* for the sender; True
        when there was nothing to send or it is safely in the spool."""
        from postroom.delivery import dsn

        envelope = message.envelope
        to = dsn.dsn_recipient_address(envelope)
        wanted = [(r, res) for r, res in items if _wants(envelope, r.recipient, kind)]
        if to is None or not wanted or self._notices is None:
            return True
        action = action or {"failure": "failed", "delay": "delayed"}[kind]
        content = await self._content(message, sign=False)
        reporting = self._delivery.helo_name or self._config.hostname
        notice = dsn.build_dsn(
            envelope=envelope,
            content=content,
            recipients=[
                dsn.DsnRecipient(
                    address=r.recipient.address,
                    orcpt=r.recipient.orcpt,
                    action=action,
                    status=_status_code(res.reply),
                    reply=res.reply,
                    remote_mta=res.peer.host if res.peer else None,
                    last_attempt=now,
                    will_retry_until=max(
                        message.received_at, message.envelope.not_before
                    )
                    + self._delivery.expire_after
                    if kind == "delay"
                    else None,
                )
                for r, res in wanted
            ],
            reporting_mta=reporting,
            kind=kind,
            now=now,
        )
        notice_env = Envelope(
            queue_id=ids.new_queue_id(),
            sender="",
            recipients=[Recipient(address=to)],
            received_at=now,
            body="8BITMIME",
            smtputf8=envelope.smtputf8,
            client_address="",
            listener="delivery",
        )
        try:
            await self._notices.submit(notice_env, notice)
        except Exception as e:  # SpoolError and friends
            log.error("%s: cannot store the %s notice: %s", message.queue_id, kind, e)
            return False
        log.info(
            logs.event(
                "notified",
                message.queue_id,
                kind=kind,
                notice=notice_env.queue_id,
                to=f"<{to}>",
                nrcpt=len(wanted),
            )
        )
        return True


def _wants(envelope: Envelope, recipient: Recipient, kind: str) -> bool:
    from postroom.delivery import dsn

    return envelope.sender != "" and dsn.should_notify(recipient, kind)


def _status_code(reply: Reply) -> str:
    if reply.enhanced:
        return reply.enhanced
    return f"{reply.code // 100}.0.0"


def _classify(reply: Reply) -> str:
    from postroom.delivery.classify import classify

    return classify(reply).cls


def _has_rates(limits: Limits) -> bool:
    return bool(
        limits.messages_per_minute
        or limits.messages_per_hour
        or limits.connections_per_minute
    )
