"""API keys: making them, reading them, checking them, scopes.

A key is ``SG.<id>.<secret>``, SendGrid's shape, so that tools which
check for the ``SG.`` prefix accept ours. ``id`` is 16 random bytes and
``secret`` 32, both URL-safe base64 (no ``.`` in that alphabet, so the
key splits cleanly). The id names the key in listings and logs; only a
SHA-256 of the secret is stored (``store/api_keys.py``).

Why SHA-256 and not scrypt like passwords (``server/passwords.py``):
scrypt's cost exists to slow down guessing of low-entropy secrets that
people choose. A key's secret is 256 random bits: no guessing attack
gets anywhere whatever the hash costs, and preimage resistance is all
a stolen table must not give away. scrypt would instead charge about
60 ms and 16 MiB to every API request (there are no sessions: each
request carries its key), which a client sending mail one request at a
time would feel at once. A keyed hash (HMAC with a server secret)
would add protection only if the database leaked without that secret,
and would make the secret itself something to back up: not worth it
at this entropy.

Scopes (``SCOPES``) are a small closed set; ``FULL`` grants all of
them, now and future ones, like SendGrid's "Full Access" key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

import sqlalchemy as sa

from postroom.store import api_keys as table
from postroom.store.api_keys import ApiKey

MAIL_SEND = "mail.send"
API_KEYS = "api_keys"
# Contacts, lists, custom fields, segments (/v3/marketing/...).
MARKETING = "marketing"
# The event store (/v3/events), webhook endpoints, suppression lists.
EVENTS_READ = "events.read"
WEBHOOKS = "webhooks"
SUPPRESSIONS = "suppressions"
FULL = "full"
SCOPES = (
    MAIL_SEND, API_KEYS, MARKETING, EVENTS_READ, WEBHOOKS, SUPPRESSIONS, FULL
)

PREFIX = "SG."
_ID_BYTES = 16
_SECRET_BYTES = 32

# The user name that makes an SMTP AUTH password an API key, as
# SendGrid's relay does.
SMTP_USER = "apikey"


@dataclass(frozen=True)
class NewKey:
    """A key just made: the stored row and the one-time plaintext."""

    key: ApiKey
    plaintext: str


def allows(key: ApiKey, scope: str) -> bool:
    """Whether *key* may do what *scope* names."""
    return scope in key.scopes or FULL in key.scopes


def check_scopes(scopes: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """*scopes* without duplicates, in our order; ValueError naming the
    first unknown one."""
    for scope in scopes:
        if scope not in SCOPES:
            raise ValueError(
                f"unknown scope {scope!r} (known: {', '.join(SCOPES)})"
            )
    return tuple(s for s in SCOPES if s in scopes)


def create(conn: sa.Connection, name: str, scopes: tuple[str, ...]) -> NewKey:
    """Make, store and return a key named *name* with *scopes*
    (already checked)."""
    key_id = _b64(secrets.token_bytes(_ID_BYTES))
    secret = _b64(secrets.token_bytes(_SECRET_BYTES))
    row = table.add(conn, key_id, name, _digest(secret), scopes)
    return NewKey(row, f"{PREFIX}{key_id}.{secret}")


def split(token: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a key in our shape, or None."""
    if not token.startswith(PREFIX):
        return None
    key_id, dot, secret = token[len(PREFIX) :].partition(".")
    if not dot or not key_id or not secret or len(token) > 200:
        return None
    return key_id, secret


def verify(conn: sa.Connection, token: str) -> ApiKey | None:
    """The live key *token* is, or None (malformed, unknown, wrong
    secret, revoked alike). The comparison is constant-time; the lookup
    by id is not, but ids are not secret (``apikey list`` shows them)."""
    parts = split(token)
    if parts is None:
        return None
    key_id, secret = parts
    key = table.get(conn, key_id)
    if key is None:
        return None
    if not hmac.compare_digest(_digest(secret), key.secret_hash):
        return None
    return None if key.revoked else key


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")

