"""Checking a username and password against the accounts table.

``Authenticator.verify`` is what SMTP AUTH, POP3 and IMAP call. Its
contract:

- It never blocks the event loop. The database lookup and the scrypt
  check (about 60 ms, see ``passwords``) run in a worker thread; at most
  ``max_concurrent`` checks run at once, so a burst of logins neither
  fills the loop's default executor, which other components share, nor
  takes more than ``max_concurrent`` x 16 MiB of scrypt memory.
- Its running time does not tell whether an account exists. An unknown
  (or malformed) username is checked against a dummy hash with the
  current parameters, so it costs one full scrypt like a wrong password
  does; a disabled account is checked in full and refused afterwards.
- It answers False for wrong credentials, unknown and disabled accounts
  alike, and raises ``AuthError`` only when it could not check at all
  (database unavailable, a stored hash it cannot read): callers answer
  that as a temporary failure (SMTP 454 4.7.0, RFC 4954 §6).

On a successful login with a hash made under older parameters, the
hash is upgraded in place; a failure to store it is logged and the login
still succeeds.

With ``api_keys`` (the SMTP server's authenticator, not POP3's or
IMAP's) the user name ``apikey`` makes the password an API key
(``postroom.api.keys``), as SendGrid's SMTP relay takes it: the key
must be live and allowed ``mail.send``. Its check is a SHA-256, not a
scrypt, and its timing tells nothing about accounts.

Passwords and hashes are never logged.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os

import sqlalchemy as sa

from postroom import logs
from postroom.api import keys
from postroom.errors import AuthError
from postroom.server import passwords
from postroom.store import users

logger = logging.getLogger("postroom.server.auth")


class Authenticator:
    """Verifies credentials against the ``users`` table of *engine*."""

    def __init__(
        self,
        engine: sa.Engine,
        max_concurrent: int | None = None,
        *,
        api_keys: bool = False,
    ):
        self._engine = engine
        self._api_keys = api_keys
        self._slots = asyncio.Semaphore(max_concurrent or os.cpu_count() or 2)
        # A well-formed hash that no password matches: random salt,
        # random digest. Building it costs nothing, unlike hashing a
        # random password, so constructing an Authenticator is cheap.
        self._dummy_hash = (
            f"$scrypt$ln={passwords.LOG2_N},r={passwords.BLOCK_SIZE},"
            f"p={passwords.PARALLELISM}${_random_b64(16)}${_random_b64(32)}"
        )

    async def verify(self, username: str, password: str) -> bool:
        """True when *username* names an enabled account and *password*
        is its password. The username is matched case-insensitively.

        Raises AuthError when the check could not be carried out.
        """
        async with self._slots:
            return await asyncio.to_thread(self._check, username, password)

    def _check(self, username: str, password: str) -> bool:
        # Runs in a worker thread: blocking calls are fine here.
        if self._api_keys and username == keys.SMTP_USER:
            return self._check_api_key(password)

        # Look the account up; an unknown one is checked against the
        # dummy hash so that it takes as long as a wrong password.
        try:
            with self._engine.connect() as conn:
                user = users.get(conn, username)
        except sa.exc.SQLAlchemyError as e:
            logger.error(
                logs.event(
                    "auth", user=username, result="error", reason=type(e).__name__
                )
            )
            raise AuthError("user database unavailable") from None
        # XXX: an account whose hash predates a change of parameters
        # takes longer or shorter than the dummy, so its existence shows
        # in the timing, because the dummy follows only the current
        # parameters; the window closes at the account's next login,
        # when its hash is upgraded.
        stored = self._dummy_hash if user is None else user.password_hash

        # The expensive part.
        try:
            ok = passwords.verify_password(password, stored)
        except ValueError as e:
            logger.error(
                logs.event("auth", user=username, result="error", reason=str(e))
            )
            raise AuthError("stored password hash is unreadable") from None

        # Refusals come after the hash, so they cost the same time.
        if user is None or not ok or user.disabled:
            return False

        if passwords.needs_rehash(user.password_hash):
            self._rehash(user.address, password)
        return True

    def _check_api_key(self, token: str) -> bool:
        try:
            with self._engine.connect() as conn:
                key = keys.verify(conn, token)
        except sa.exc.SQLAlchemyError as e:
            logger.error(
                logs.event(
                    "auth", user=keys.SMTP_USER, result="error",
                    reason=type(e).__name__,
                )
            )
            raise AuthError("key database unavailable") from None
        return key is not None and keys.allows(key, keys.MAIL_SEND)

    def _rehash(self, address: str, password: str) -> None:
        try:
            with self._engine.begin() as conn:
                users.set_password(conn, address, passwords.hash_password(password))
        except Exception as e:
            # Broad on purpose: the login itself has succeeded and must
            # not fail because an upgrade of its hash could not be kept.
            logger.warning(
                logs.event(
                    "auth",
                    user=address,
                    result="rehash-failed",
                    reason=type(e).__name__,
                )
            )


def _random_b64(size: int) -> str:
    return base64.b64encode(os.urandom(size)).decode("ascii").rstrip("=")
