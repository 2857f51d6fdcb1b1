"""``postroom user ...`` run through the real entry point."""

from __future__ import annotations

import importlib
import io
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from postroom.cli import main as cli
from postroom.server import passwords
from postroom.store import db, users


@pytest.fixture(autouse=True)
def sibling_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    # main.build_parser imports every command group. While a group is
    # still being written by someone else, stand in an empty one so that
    # these tests exercise ``user`` alone; once it exists, it is used.
    for name in ("serve", "send", "queue"):
        module = f"postroom.cli.{name}"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            stub = types.ModuleType(module)
            stub.register = lambda subparsers: None  # type: ignore[attr-defined]
            monkeypatch.setitem(sys.modules, module, stub)


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("POSTROOM_CONFIG", raising=False)
    path = tmp_path / "postroom.toml"
    path.write_text(f'data_dir = "{tmp_path / "data"}"\n')
    (tmp_path / "data").mkdir()
    return path


@pytest.fixture
def run(config_file: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> Iterator[Runner]:
    yield Runner(config_file, monkeypatch, capsys)


class Runner:
    """Runs ``postroom -c CONFIG ...`` with scripted stdin or prompts."""

    def __init__(self, config_file: Path, monkeypatch: pytest.MonkeyPatch,
                 capsys: pytest.CaptureFixture[str]):
        self.config_file = config_file
        self.monkeypatch = monkeypatch
        self.capsys = capsys
        self.prompts: list[str] = []

    def __call__(self, *argv: str, stdin: str = "",
                 typed: tuple[str, ...] = ()) -> tuple[int, str, str]:
        answers = iter(typed)

        def fake_getpass(prompt: str = "") -> str:
            self.prompts.append(prompt)
            try:
                return next(answers)
            except StopIteration:
                raise EOFError from None

        self.monkeypatch.setattr("getpass.getpass", fake_getpass)
        self.monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        status = cli.main(["-c", str(self.config_file), *argv])
        out, err = self.capsys.readouterr()
        return status, out, err

    def stored_hash(self, address: str) -> str | None:
        data_dir = self.config_file.parent / "data"
        engine = db.create_engine(f"sqlite:///{data_dir / 'postroom.db'}")
        try:
            with engine.connect() as conn:
                user = users.get(conn, address)
        finally:
            engine.dispose()
        return None if user is None else user.password_hash


def test_add_from_stdin_then_list(run: Runner) -> None:
    status, out, err = run("user", "add", "Alice@Example.TEST",
                           "--password-stdin", stdin=" pass word \n")
    assert (status, out, err) == (0, "", "")

    stored = run.stored_hash("alice@example.test")
    assert stored is not None
    # Spaces are part of the password; only the newline is removed.
    assert passwords.verify_password(" pass word ", stored)

    status, out, _ = run("user", "list")
    assert status == 0
    assert out.splitlines()[0].startswith("alice@example.test  ")
    assert out.splitlines()[0].endswith("Z  active  default  0")


def test_add_with_prompt_asks_twice(run: Runner) -> None:
    status, _, _ = run("user", "add", "bob@example.test",
                       typed=("hunter2", "hunter2"))

    assert status == 0
    assert run.prompts == ["Password: ", "Repeat password: "]
    stored = run.stored_hash("bob@example.test")
    assert stored is not None and passwords.verify_password("hunter2", stored)


@pytest.mark.parametrize(("argv", "stdin", "typed", "message"), [
    (("add", "carol@example.test"), "", ("one", "two"),
     "passwords do not match"),
    (("add", "carol@example.test", "--password-stdin"), "\n", (),
     "empty password refused"),
    (("add", "carol@example.test"), "", (), "no password given"),
    (("add", "not-an-address", "--password-stdin"), "pw\n", (),
     "not an address"),
    (("add", "a b@example.test", "--password-stdin"), "pw\n", (),
     "forbidden character"),
    # Accepted by the loose address check, but no mailbox could have
    # the name: refused before an account exists that can never get mail.
    (("add", "../carol@example.test", "--password-stdin"), "pw\n", (),
     "unusable as a mailbox"),
    (("add", "carol..x@example.test", "--password-stdin"), "pw\n", (),
     "unusable as a mailbox"),
    (("passwd", "nobody@example.test", "--password-stdin"), "pw\n", (),
     "no such user: nobody@example.test"),
    (("del", "nobody@example.test"), "", (),
     "no such user: nobody@example.test"),
])
def test_errors_are_one_line(run: Runner, argv: tuple[str, ...], stdin: str,
                             typed: tuple[str, ...], message: str) -> None:
    status, out, err = run("user", *argv, stdin=stdin, typed=typed)

    assert status == 1
    assert out == ""
    assert err.startswith("postroom: ") and message in err
    assert err.count("\n") == 1
    assert run.stored_hash("carol@example.test") is None


def test_duplicate_add_is_refused(run: Runner) -> None:
    run("user", "add", "dave@example.test", "--password-stdin", stdin="a\n")
    first = run.stored_hash("dave@example.test")

    status, _, err = run("user", "add", "DAVE@example.test",
                         "--password-stdin", stdin="b\n")

    assert status == 1
    assert err == "postroom: user already exists: dave@example.test\n"
    assert run.stored_hash("dave@example.test") == first


def test_passwd_replaces_the_password(run: Runner) -> None:
    run("user", "add", "erin@example.test", "--password-stdin", stdin="old\n")

    status, _, _ = run("user", "passwd", "erin@example.test",
                       typed=("new", "new"))

    assert status == 0
    stored = run.stored_hash("erin@example.test")
    assert stored is not None
    assert passwords.verify_password("new", stored)
    assert not passwords.verify_password("old", stored)


def test_del_removes_the_account(run: Runner) -> None:
    run("user", "add", "frank@example.test", "--password-stdin", stdin="x\n")

    status, _, _ = run("user", "del", "Frank@example.test")

    assert status == 0
    assert run.stored_hash("frank@example.test") is None
    assert run("user", "list")[1] == ""
