"""API keys: who may call the HTTP API (and submit over SMTP as
``apikey``), and what each may do.

One row per key in ``api_keys``. A key is shown once, when it is made,
in SendGrid's shape ``SG.<id>.<secret>``; the row keeps the id in the
clear (it names the key in listings and logs) and only a hash of the
secret (``postroom.api.keys`` makes and checks them). ``scopes`` is a
space-separated list of scope names. A revoked key keeps its row, with
``revoked_at`` set, so that logs naming its id still lead somewhere.

Functions take an open ``sa.Connection``, as ``store/users.py`` does,
so that a caller can put several in one transaction.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa

from postroom.store.db import metadata

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    # Hex SHA-256 of the secret part (see postroom/api/keys.py for why
    # not scrypt).
    sa.Column("secret_hash", sa.String(64), nullable=False),
    sa.Column("scopes", sa.Text, nullable=False),
    # UTC; SQLite keeps no zone, so reads re-attach it.
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
)


@dataclass(frozen=True)
class ApiKey:
    """One key as stored (never its secret)."""

    id: str
    name: str
    secret_hash: str
    scopes: tuple[str, ...]
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    revoked_at: dt.datetime | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def add(
    conn: sa.Connection,
    key_id: str,
    name: str,
    secret_hash: str,
    scopes: tuple[str, ...],
) -> ApiKey:
    """Store a new key; the id is random, so a clash is a bug and
    surfaces as the driver's IntegrityError."""
    created = now()
    conn.execute(
        api_keys.insert().values(
            id=key_id,
            name=name,
            secret_hash=secret_hash,
            scopes=" ".join(scopes),
            created_at=created,
        )
    )
    return ApiKey(key_id, name, secret_hash, scopes, created, None, None)


def get(conn: sa.Connection, key_id: str) -> ApiKey | None:
    row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).first()
    return None if row is None else _key(row)


def list_all(conn: sa.Connection) -> list[ApiKey]:
    """Every key, revoked ones included, oldest first."""
    rows = conn.execute(sa.select(api_keys).order_by(api_keys.c.created_at))
    return [_key(row) for row in rows]


def revoke(conn: sa.Connection, key_id: str) -> bool:
    """Revoke *key_id*; False if there is no such key or it was
    revoked already."""
    result = conn.execute(
        api_keys.update()
        .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=now())
    )
    return result.rowcount > 0


def touch(conn: sa.Connection, key_id: str, when: dt.datetime) -> None:
    """Record that *key_id* was used at *when*."""
    conn.execute(
        api_keys.update().where(api_keys.c.id == key_id).values(last_used_at=when)
    )


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


def _key(row: sa.Row[tuple[object, ...]]) -> ApiKey:
    created = _utc(row.created_at)
    assert created is not None
    return ApiKey(
        id=row.id,
        name=row.name,
        secret_hash=row.secret_hash,
        scopes=tuple(row.scopes.split()),
        created_at=created,
        last_used_at=_utc(row.last_used_at),
        revoked_at=_utc(row.revoked_at),
    )
