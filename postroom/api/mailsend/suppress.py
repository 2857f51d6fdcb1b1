"""Dropping suppressed recipients from Mail Send, as SendGrid does.

A recipient on a global suppression list (bounce, unsubscribe, spam
report, invalid), or unsubscribed from the request's ``asm.group_id``,
is taken out of its message's envelope before the message is queued,
and a ``dropped`` event says so (reason in SendGrid's words). The
address stays in the To/Cc header the sender wrote: only the copy to
it is not sent. A message with no recipient left is not queued at all;
the request is still answered 202, as SendGrid answers it.

The drops are found with one query per 500 addresses
(``suppressions.suppressed``); their events are written after the
rest is durable, so a failed request (503, to be retried) leaves none.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from postroom import events, suppressions
from postroom.queue.envelope import Envelope

Prepared = list[tuple[Envelope, bytes]]


def group_of(asm: dict[str, Any] | None) -> int | None:
    """The request's unsubscribe group, or None."""
    if not asm:
        return None
    group = asm.get("group_id")
    return group if isinstance(group, int) and not isinstance(group, bool) else None


def drop(
    engine: sa.Engine, prepared: Prepared, group_id: int | None
) -> tuple[Prepared, list[events.Row]]:
    """*prepared* without suppressed recipients (and without messages
    left with none), and the ``dropped`` events to record. Blocking."""
    addresses = {r.address for env, _ in prepared for r in env.recipients}
    with engine.connect() as conn:
        found = suppressions.suppressed(conn, addresses, group_id)
    if not found:
        return prepared, []
    kept: Prepared = []
    rows: list[events.Row] = []
    for envelope, content in prepared:
        meta = events.meta_of(envelope)
        keep = []
        for rcpt in envelope.recipients:
            kind = found.get(suppressions.normalize(rcpt.address))
            if kind is None:
                keep.append(rcpt)
                continue
            rows.append(
                events.row(
                    events.Kind.DROPPED,
                    envelope.received_at,
                    meta,
                    envelope.queue_id,
                    None,
                    rcpt.address,
                    reason=suppressions.DROP_REASONS[kind],
                )
            )
        if keep:
            envelope.recipients = keep
            kept.append((envelope, content))
    return kept, rows


def record(engine: sa.Engine, rows: list[events.Row]) -> None:
    """Store the ``dropped`` events. Blocking."""
    if rows:
        with engine.begin() as conn:
            events.record(conn, rows)
