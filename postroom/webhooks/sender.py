"""The webhook sender: posts new events to every endpoint, and replays.

Theory of operation
-------------------
One sender runs per node, in the delivery process (``cli/serve.py``
starts it beside the engine), so that N workers never post the same
events N times. It is one asyncio task that wakes every
``webhooks.poll_interval`` seconds and makes one *round*:

1. For each enabled endpoint that is due (``next_try`` passed), and each
   due replay, take up to ``batch_size`` events after its cursor that
   it wants (a replay: within its time range).
2. Post each batch as one JSON array of SendGrid event objects
   (``events.to_sendgrid``), signed (``signing.py``), all endpoints at
   once, each with ``webhooks.timeout``.
3. On a 2xx the cursor moves past the batch; on anything else (an
   error status, a refused connection, a timeout) it stays, and the
   endpoint is due again after ``retry_first`` seconds, doubling up to
   ``retry_max``. An endpoint that has failed for ``give_up_after``
   seconds skips the batch it is stuck on, with a warning, and goes on.
   A replay whose range is exhausted is deleted.

A round that posted full batches starts the next one at once. The
cursors are rows (``store/webhooks.py``), so a restart resumes where
the last 2xx left off: delivery is at-least-once, and a receiver that
must not count an event twice keys on ``sg_event_id``.

Database access is synchronous on the loop's thread, as the delivery
engine's: a round's statements are a few indexed reads and one short
write per endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import sqlalchemy as sa

from postroom import __version__, events
from postroom.config import WebhooksConfig
from postroom.store import events as event_table
from postroom.store.webhooks import webhook_replays, webhooks
from postroom.webhooks import signing

log = logging.getLogger("postroom.webhooks")

_E = event_table.events
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


@dataclass
class _Stream:
    """One cursor to serve this round: an endpoint's live stream, or a
    replay (``start``/``end`` set) posting to that endpoint."""

    table: sa.Table
    row_id: int
    url: str
    secret: str
    kinds: list[str] | None
    cursor: int
    failures: int
    failing_since: float | None
    start: float | None = None
    end: float | None = None


class WebhookSender:
    """See the module docstring. *transport* replaces httpx's network
    transport (tests); *clock* gives the time for retries."""

    def __init__(
        self,
        config: WebhooksConfig,
        db: sa.Engine,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._db = db
        self._clock = clock
        self._client = httpx.AsyncClient(
            timeout=config.timeout,
            transport=transport,
            follow_redirects=False,
            headers={"User-Agent": f"Postroom-Webhook/{__version__}"},
        )
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.posted = 0  # batches accepted since start (tests, metrics)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="webhooks")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._client.aclose()

    def poke(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                full = await self.run_once()
            except sa.exc.OperationalError as e:  # database busy or gone
                log.error("webhook round failed error=%s", e)
                full = False
            except Exception:
                # The top of the task: a bug in one round must not stop
                # every later one (cursors are rows: nothing is lost).
                log.exception("webhook round failed")
                full = False
            if full:
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._config.poll_interval)

    async def run_once(self) -> bool:
        """One round (see the module docstring); True when some batch
        was full, so that more may be waiting."""
        now = self._clock()
        with self._db.connect() as conn:
            newest = events.last_id(conn)
            work = [(s, self._batch(conn, s, newest)) for s in self._due(conn, now)]
        results = await asyncio.gather(
            *(self._post(s, batch) for s, batch in work if batch)
        )
        outcomes = iter(results)
        full = False
        with self._db.begin() as conn:
            for stream, batch in work:
                if not batch:
                    self._exhausted(conn, stream, newest)
                    continue
                error = next(outcomes)
                if error is None:
                    self._advance(conn, stream, batch, newest)
                    full = full or len(batch) >= self._config.batch_size
                else:
                    self._failed(conn, stream, batch, error, now)
        return full

    # -- one round's steps ------------------------------------------------

    def _due(self, conn: sa.Connection, now: float) -> list[_Stream]:
        w, r = webhooks, webhook_replays
        streams = [
            _Stream(w, h.id, h.url, h.secret, _kinds(h.kinds), h.cursor,
                    h.failures, h.failing_since)
            for h in conn.execute(
                sa.select(w).where(w.c.enabled, w.c.next_try <= now).order_by(w.c.id)
            )
        ]
        streams += [
            _Stream(r, x.id, x.url, x.secret, _kinds(x.kinds), x.cursor,
                    x.failures, x.failing_since, x.start, x.end)
            for x in conn.execute(
                sa.select(r, w.c.url, w.c.secret, w.c.kinds)
                .join(w, w.c.id == r.c.webhook_id)
                .where(r.c.next_try <= now)
                .order_by(r.c.id)
            )
        ]
        return streams

    def _batch(self, conn: sa.Connection, s: _Stream, newest: int) -> list[Any]:
        query = (
            sa.select(_E)
            .where(_E.c.id > s.cursor, _E.c.id <= newest)
            .order_by(_E.c.id)
            .limit(self._config.batch_size)
        )
        if s.kinds is not None:
            query = query.where(_E.c.kind.in_(s.kinds))
        if s.start is not None and s.end is not None:
            query = query.where(_E.c.time >= s.start, _E.c.time < s.end)
        return list(conn.execute(query))

    async def _post(self, s: _Stream, batch: list[Any]) -> str | None:
        """Post *batch* to *s*'s endpoint; None on a 2xx, else why not."""
        body = _ENCODER.encode([events.to_sendgrid(e) for e in batch]).encode()
        stamp = int(self._clock())
        headers = {
            "Content-Type": "application/json",
            signing.TIMESTAMP_HEADER: str(stamp),
            signing.SIGNATURE_HEADER: signing.sign(s.secret, stamp, body),
        }
        try:
            response = await self._client.post(s.url, content=body, headers=headers)
        except httpx.HTTPError as e:
            return f"{type(e).__name__}: {e}"[:200]
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}"

    def _advance(
        self, conn: sa.Connection, s: _Stream, batch: list[Any], newest: int
    ) -> None:
        # A short batch took everything up to *newest* the stream wants,
        # so the cursor may skip the unwanted events past its last one.
        last = batch[-1].id
        if len(batch) < self._config.batch_size:
            last = newest
        values: dict[str, Any] = dict(
            cursor=last, next_try=0.0, failures=0, failing_since=None
        )
        if s.table is webhooks:
            values["last_error"] = None
        conn.execute(s.table.update().where(s.table.c.id == s.row_id).values(**values))
        self.posted += 1
        log.info(
            "webhook posted webhook=%s events=%d cursor=%d",
            _name(s), len(batch), last,
        )

    def _exhausted(self, conn: sa.Connection, s: _Stream, newest: int) -> None:
        if s.table is webhook_replays:
            conn.execute(s.table.delete().where(s.table.c.id == s.row_id))
            log.info("webhook replay done webhook=%s", _name(s))
        elif s.cursor < newest:
            conn.execute(
                s.table.update()
                .where(s.table.c.id == s.row_id, s.table.c.cursor < newest)
                .values(cursor=newest)
            )

    def _failed(
        self,
        conn: sa.Connection,
        s: _Stream,
        batch: list[Any],
        error: str,
        now: float,
    ) -> None:
        cfg = self._config
        since = s.failing_since if s.failing_since is not None else now
        if cfg.give_up_after and now - since >= cfg.give_up_after:
            # XXX: the batch is lost to this endpoint (a replay can
            # still send it) because one dead endpoint must not hold
            # its events forever; SendGrid drops after 24 hours too.
            log.warning(
                "webhook gave up webhook=%s events=%d error=%s",
                _name(s), len(batch), json.dumps(error),
            )
            self._advance(conn, s, batch, batch[-1].id)
            return
        failures = s.failures + 1
        delay = min(cfg.retry_max, cfg.retry_first * 2.0 ** min(failures - 1, 30))
        values: dict[str, Any] = dict(
            next_try=now + delay, failures=failures, failing_since=since
        )
        if s.table is webhooks:
            values["last_error"] = error
        conn.execute(s.table.update().where(s.table.c.id == s.row_id).values(**values))
        log.warning(
            "webhook failed webhook=%s events=%d failures=%d retry_in=%.0f error=%s",
            _name(s), len(batch), failures, delay, json.dumps(error),
        )


def _kinds(raw: str | None) -> list[str] | None:
    return list(json.loads(raw)) if raw is not None else None


def _name(s: _Stream) -> str:
    return f"{s.row_id}" if s.table is webhooks else f"replay:{s.row_id}"


async def start_sender(config: WebhooksConfig, db: sa.Engine) -> WebhookSender | None:
    """Start the node's sender unless ``webhooks.enabled`` is off."""
    if not config.enabled:
        return None
    sender = WebhookSender(config, db)
    await sender.start()
    return sender
