"""Authenticator: outcomes, equal work for unknown users, loop not blocked."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from postroom.errors import AuthError
from postroom.server import auth, passwords
from postroom.store import db, users

ALICE = "alice@example.test"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = db.create_engine(f"sqlite:///{tmp_path / 'postroom.db'}")
    with engine.begin() as conn:
        users.add(conn, ALICE, passwords.hash_password("s3cret"))
    yield engine
    engine.dispose()


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records the stored hash of every verify_password call."""
    seen: list[str] = []
    real = passwords.verify_password

    def spy(password: str, stored: str) -> bool:
        seen.append(stored)
        return real(password, stored)

    monkeypatch.setattr(passwords, "verify_password", spy)
    return seen


async def test_right_password(engine: sa.Engine) -> None:
    assert await auth.Authenticator(engine).verify(ALICE, "s3cret")


async def test_username_is_case_insensitive(engine: sa.Engine) -> None:
    assert await auth.Authenticator(engine).verify("Alice@Example.TEST",
                                                   "s3cret")


async def test_wrong_password(engine: sa.Engine) -> None:
    assert not await auth.Authenticator(engine).verify(ALICE, "S3cret")


@pytest.mark.parametrize("username", ["bob@example.test", "no-at-sign", ""])
async def test_unknown_user_costs_a_full_check(
        engine: sa.Engine, calls: list[str], username: str) -> None:
    assert not await auth.Authenticator(engine).verify(username, "s3cret")

    # The dummy hash was checked, with the same parameters as real ones.
    assert len(calls) == 1
    assert not passwords.needs_rehash(calls[0])


async def test_disabled_user_fails_after_a_full_check(
        engine: sa.Engine, calls: list[str]) -> None:
    with engine.begin() as conn:
        users.set_disabled(conn, ALICE, True)

    assert not await auth.Authenticator(engine).verify(ALICE, "s3cret")
    assert len(calls) == 1


async def test_check_runs_off_the_event_loop(
        engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    # The fake check waits for an event that only the loop can set. Run
    # on the loop's thread, it would wait out its timeout with the loop
    # stuck, and return False.
    started = threading.Event()
    release = threading.Event()

    def blocking_check(password: str, stored: str) -> bool:
        started.set()
        return release.wait(timeout=5)

    monkeypatch.setattr(passwords, "verify_password", blocking_check)
    task = asyncio.create_task(auth.Authenticator(engine).verify(ALICE, "x"))
    while not started.is_set():
        await asyncio.sleep(0.005)
    release.set()

    assert await asyncio.wait_for(task, timeout=5)


async def test_old_hash_is_upgraded_on_login(
        engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(passwords, "LOG2_N", 10)
    weak = passwords.hash_password("s3cret")
    monkeypatch.undo()
    with engine.begin() as conn:
        users.set_password(conn, ALICE, weak)

    assert await auth.Authenticator(engine).verify(ALICE, "s3cret")

    with engine.connect() as conn:
        user = users.get(conn, ALICE)
    assert user is not None
    assert not passwords.needs_rehash(user.password_hash)
    assert passwords.verify_password("s3cret", user.password_hash)


async def test_unreadable_hash_is_an_auth_error(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        users.set_password(conn, ALICE, "{PLAIN}s3cret")

    with pytest.raises(AuthError):
        await auth.Authenticator(engine).verify(ALICE, "s3cret")


async def test_database_failure_is_an_auth_error(tmp_path: Path) -> None:
    # An engine whose tables were never created.
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'empty.db'}")

    with pytest.raises(AuthError):
        await auth.Authenticator(engine).verify(ALICE, "s3cret")


async def test_concurrent_checks_are_bounded(
        engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    running = 0
    peak = 0
    lock = threading.Lock()

    def slow_check(password: str, stored: str) -> bool:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        threading.Event().wait(0.02)
        with lock:
            running -= 1
        return False

    monkeypatch.setattr(passwords, "verify_password", slow_check)
    authenticator = auth.Authenticator(engine, max_concurrent=2)
    await asyncio.gather(*(authenticator.verify(ALICE, "x") for _ in range(6)))

    assert peak == 2
