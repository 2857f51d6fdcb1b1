"""Putting messages made by the API into the durable queue: the same
spool, envelope and queue rows as a message received over SMTP, so
delivery neither knows nor cares where a message came from.

For each message, as the SMTP session does at the end of DATA
(``server/session.py`` ``_store``):

1. a new queue id; our Received field (``with HTTP``) and, where the
   message lacks them, Message-ID and Date (``received.missing_fields``,
   as for submitted mail), prepended;
2. the envelope: MAIL FROM is the message's From address, the
   recipients are to, cc and bcc with aliases of local domains replaced
   by their targets (``RelayPolicy.expand``), ``auth_user`` names the
   key, ``not_before`` holds a scheduled send's time, ``api`` what the
   request said that delivery does not act on yet;
3. ``Spool.submit`` for all messages of the request at once, then wait
   for every future: each resolves only once its record is fsync'd and
   its rows committed, so the 202 that follows promises what a 250
   promises over SMTP.

A scheduled message is an ordinary queued message whose recipients'
``next_attempt`` is the send time (``store/queue.py``); the delivery
engine's "who is due?" query leaves it alone until then, recovery
rebuilds its rows from the envelope the same way, and its age for
retries and expiry counts from the send time (``delivery/engine.py``).
``postroom queue flush`` sends it at once, like any waiting message.

Who may call: the event loop that owns the spool (the worker's).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

from postroom import ids, logs
from postroom.api import keys
from postroom.api.mailsend.compose import Composed
from postroom.errors import SpoolError
from postroom.protocol.smtp import replies
from postroom.protocol.smtp.syntax import SyntaxProblem, parse_path
from postroom.queue.envelope import Envelope, Recipient
from postroom.server import received
from postroom.server.policy import RelayPolicy

log = logging.getLogger(__name__)


class Submitter(Protocol):
    """Where messages go: ``Spool.submit``."""

    def submit(self, envelope: Envelope, content: bytes) -> asyncio.Future[None]: ...


@dataclass(frozen=True)
class Origin:
    """Who asked: the client's address, the key, our listener's name."""

    client: str
    key_id: str
    listener: str


def local_refusals(
    policy: RelayPolicy | None, messages: list[Composed]
) -> list[tuple[str, str]]:
    """``(message, field)`` for each recipient of a local domain that
    SMTP would refuse for good at RCPT (unknown user, routing in the
    local part). Blocking: a database read per local recipient.

    A temporary refusal (a full mailbox) is not one: local delivery
    defers and retries, as it would for mail accepted over SMTP.
    """
    if policy is None:
        return []
    found = []
    for message in messages:
        for field, address in message.recipients:
            try:
                parsed, _ = parse_path(
                    f"<{address}>", null_ok=False, bad=replies.RCPT_SYNTAX
                )
            except SyntaxProblem:  # pragma: no cover - the model checked it
                continue
            if not policy.is_local(parsed):
                continue
            refusal = policy.check_recipient(
                parsed, listener_kind="submission", authenticated=True, trusted=False
            )
            if refusal is not None and refusal.code >= 500:
                found.append((f"recipient refused: {refusal.text}", field))
    return found


def prepare(
    messages: list[Composed],
    *,
    origin: Origin,
    hostname: str,
    policy: RelayPolicy | None,
    meta: dict[str, Any],
    now: float | None = None,
) -> list[tuple[Envelope, bytes]]:
    """Envelope and content of each message, ready for the spool.
    Blocking (alias expansion may read the database)."""
    now = time.time() if now is None else now
    prepared = []
    for message in messages:
        queue_id = ids.new_queue_id()
        not_before = float(message.send_at or 0)
        if not_before <= now:
            not_before = 0.0  # due now; SendGrid sends a past send_at at once
        rcpts = [Recipient(address) for _, address in message.recipients]
        header = received.header(
            utf8=message.smtputf8,
            helo="api",
            client_ip=origin.client,
            hostname=hostname,
            protocol="HTTP",
            queue_id=queue_id,
            tls="",
            now=now,
            recipient=rcpts[0].address if len(rcpts) == 1 else None,
        )
        # A scheduled message is dated when it goes out, as a client's
        # "send later" dates it.
        header += received.missing_fields(
            message.content,
            queue_id=queue_id,
            hostname=hostname,
            now=max(now, not_before),
        )
        content = header + message.content
        envelope = Envelope(
            queue_id=queue_id,
            sender=message.sender,
            recipients=policy.expand(rcpts) if policy is not None else rcpts,
            received_at=now,
            body="8BITMIME" if not content.isascii() else "7BIT",
            smtputf8=message.smtputf8,
            client_address=origin.client,
            client_helo="",
            # "apikey:<id>": the AUTH user SendGrid's relay takes, and which key.
            auth_user=f"{keys.SMTP_USER}:{origin.key_id}",
            listener=origin.listener,
            not_before=not_before,
            api={
                **meta,
                "personalization": message.index,
                "custom_args": message.custom_args or None,
            },
        )
        prepared.append((envelope, content))
    return prepared


async def submit(spool: Submitter, prepared: list[tuple[Envelope, bytes]]) -> None:
    """Store every message; return once all are durable.

    Raises SpoolError when any could not be stored. XXX: the others of
    the request may then be queued all the same (they share a group
    commit unless the batch was cut), and a caller that retries after
    the error sends those twice; SMTP has the same window per message,
    and a request-wide transaction would need the spool to commit a
    group all or nothing.
    """
    futures = []
    try:
        for envelope, content in prepared:
            futures.append(spool.submit(envelope, content))
    finally:
        results = await asyncio.gather(*futures, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise SpoolError(str(result)) from result


def log_received(
    prepared: list[tuple[Envelope, bytes]], origin: Origin, request_id: str
) -> None:
    for envelope, content in prepared:
        log.info(
            logs.event(
                "received",
                envelope.queue_id,
                client=origin.client,
                sender=f"<{envelope.sender}>",
                size=len(content),
                nrcpt=len(envelope.recipients),
                proto="HTTP",
                auth=envelope.auth_user,
                request=request_id,
                not_before=int(envelope.not_before) or None,
                listener=origin.listener,
            )
        )

