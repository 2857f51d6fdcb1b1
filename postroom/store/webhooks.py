"""Webhook tables: the endpoints events are posted to, and replays.

The outbox is not a row per event per endpoint: it is a cursor per
endpoint (``webhooks.cursor``, the id of the last event it took) over
the append-only ``events`` table. "Not yet delivered to this endpoint"
is then "id above its cursor", emitting an event writes nothing for
webhooks at all, and the cursor moves only after the endpoint answered
2xx: at-least-once, durable across restarts. A replay
(``webhook_replays``) is one more cursor, bounded by a time range.
"""

from __future__ import annotations

import sqlalchemy as sa

from postroom.store.db import metadata

webhooks = sa.Table(
    "webhooks",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
    # The HMAC key of the signature header. Kept in clear: the sender
    # needs it to sign, and it authenticates us to the receiver, not
    # the receiver to us.
    sa.Column("secret", sa.String(64), nullable=False),
    # JSON list of event kinds to post; NULL for all.
    sa.Column("kinds", sa.Text, nullable=True),
    # The id of the last event the endpoint accepted (the outbox).
    sa.Column("cursor", sa.Integer, nullable=False, server_default="0"),
    # Retry state: when to try next, failures in a row, since when.
    sa.Column("next_try", sa.Float, nullable=False, server_default="0"),
    sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
    sa.Column("failing_since", sa.Float, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("created", sa.Float, nullable=False),
)

webhook_replays = sa.Table(
    "webhook_replays",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "webhook_id",
        sa.Integer,
        sa.ForeignKey("webhooks.id", ondelete="CASCADE"),
        nullable=False,
    ),
    # Events with start <= time < end are posted again.
    sa.Column("start", sa.Float, nullable=False),
    sa.Column("end", sa.Float, nullable=False),
    sa.Column("cursor", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_try", sa.Float, nullable=False, server_default="0"),
    sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
    sa.Column("failing_since", sa.Float, nullable=True),
    sa.Column("created", sa.Float, nullable=False),
)
