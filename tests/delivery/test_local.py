"""LocalDelivery: Maildir layout, the file written, refusals, failures.

All on a temporary directory; fsync stays on (it costs little on tmpfs
and the code path is the one production runs).
"""

from __future__ import annotations

import errno
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from postroom.delivery.local import BAD_MAILBOX, DELIVERED_REPLY, LocalDelivery
from postroom.delivery.outcome import BOUNCED, DEFERRED, DELIVERED, Result
from postroom.mailbox import maildir as maildir_mod
from postroom.queue.envelope import Envelope, Recipient

CONTENT = (
    b"From: alice@example.test\r\n"
    b"Subject: hello\r\n"
    b"\r\n"
    b"caf\xc3\xa9\r\n"
    b".leading dot stays\r\n"
)
# Maildir's unique name, and Dovecot's ",S=" size suffix.
NAME = re.compile(r"\d+\.M\d+P\d+Q\d+\.mx\.example\.test,S=(\d+)")


@pytest.fixture
def mailboxes(tmp_path: Path) -> Path:
    return tmp_path / "mailboxes"


@pytest.fixture
def agent(mailboxes: Path) -> LocalDelivery:
    return LocalDelivery(mailboxes, "mx.example.test")


def deliver(agent: LocalDelivery, rcpt: str, sender: str = "bob@example.org") -> Result:
    envelope = Envelope("0TESTQUEUEID", sender, [Recipient(rcpt)])
    return agent.deliver(envelope, envelope.recipients[0], CONTENT)


def new_files(maildir: Path) -> list[Path]:
    return sorted((maildir / "new").iterdir())


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


# -- the file ---------------------------------------------------------------


def test_delivers_into_new_with_trace_headers(
    agent: LocalDelivery, mailboxes: Path
) -> None:
    result = deliver(agent, "carol@example.test")

    assert result.status == DELIVERED
    assert result.reply == DELIVERED_REPLY
    assert result.peer is None
    maildir = mailboxes / "example.test" / "carol" / "Maildir"
    [path] = new_files(maildir)
    data = path.read_bytes()
    assert data == (
        b"Return-Path: <bob@example.org>\r\nDelivered-To: carol@example.test\r\n"
        + CONTENT
    )
    # The name is Maildir's, and its size suffix is the file's size.
    match = NAME.fullmatch(path.name)
    assert match is not None
    assert int(match.group(1)) == len(data)
    assert list((maildir / "tmp").iterdir()) == []
    assert (maildir / "cur").is_dir()


def test_directories_are_private(agent: LocalDelivery, mailboxes: Path) -> None:
    deliver(agent, "carol@example.test")
    maildir = mailboxes / "example.test" / "carol" / "Maildir"
    for path in (maildir.parent.parent, maildir.parent, maildir, maildir / "new"):
        assert path.stat().st_mode & 0o077 == 0, path
    assert new_files(maildir)[0].stat().st_mode & 0o077 == 0


def test_null_sender_gets_an_empty_return_path(
    agent: LocalDelivery, mailboxes: Path
) -> None:
    deliver(agent, "carol@example.test", sender="")
    [path] = new_files(mailboxes / "example.test" / "carol" / "Maildir")
    assert path.read_bytes().startswith(b"Return-Path: <>\r\n")


@pytest.mark.parametrize("breaker", ["\r\n", "\n", "\x85", "\u2028", "\u2029"])
def test_trace_fields_cannot_be_split(
    agent: LocalDelivery, mailboxes: Path, breaker: str
) -> None:
    # SMTPUTF8 lets a sender hold U+2028 (our parser takes it); readers
    # that split a decoded header with str.splitlines() break there.
    sender = f"bob{breaker}X-Evil: 1@example.org"
    deliver(agent, "carol@example.test", sender=sender)
    [path] = new_files(mailboxes / "example.test" / "carol" / "Maildir")

    head = path.read_bytes().decode().split("\r\n\r\n")[0]
    assert head.splitlines()[0] == "Return-Path: <bobX-Evil: 1@example.org>"


def test_two_deliveries_make_two_files(agent: LocalDelivery, mailboxes: Path) -> None:
    deliver(agent, "carol@example.test")
    deliver(agent, "carol@example.test")
    assert len(new_files(mailboxes / "example.test" / "carol" / "Maildir")) == 2


def test_works_without_fsync(mailboxes: Path) -> None:
    agent = LocalDelivery(mailboxes, "mx.example.test", fsync=False)
    assert deliver(agent, "carol@example.test").status == DELIVERED


# -- mapping addresses to directories ---------------------------------------


@pytest.mark.parametrize(
    ("address", "relative"),
    [
        ("alice@example.test", "example.test/alice"),
        ("Alice@Example.TEST", "example.test/alice"),
        ("alice+lists@example.test", "example.test/alice"),
        ("alice+a+b@example.test", "example.test/alice"),
        ('"alice"@example.test', "example.test/alice"),
        ("+tag@example.test", "example.test/+tag"),
        ("a.b-c_d@example.test", "example.test/a.b-c_d"),
        ("postmaster", "mx.example.test/postmaster"),
        ("ops@[127.0.0.1]", "[127.0.0.1]/ops"),
        ("josé@bücher.test", "xn--bcher-kva.test/josé"),
        ("JOSÉ@bücher.test", "xn--bcher-kva.test/josé"),
        # NFD spelling of the same name lands in the same directory.
        ("jose\u0301@bücher.test", "xn--bcher-kva.test/josé"),
    ],
)
def test_maildir_for(
    agent: LocalDelivery, mailboxes: Path, address: str, relative: str
) -> None:
    assert agent.maildir_for(address) == mailboxes / relative / "Maildir"


def test_subaddress_is_delivered_to_the_base_mailbox(
    agent: LocalDelivery, mailboxes: Path
) -> None:
    assert deliver(agent, "Carol+news@example.test").status == DELIVERED
    [path] = new_files(mailboxes / "example.test" / "carol" / "Maildir")
    # Delivered-To keeps the address as it was given.
    assert b"\r\nDelivered-To: Carol+news@example.test\r\n" in path.read_bytes()


UNSAFE = [
    "../etc@example.test",
    "..@example.test",
    "a..b@example.test",
    ".hidden@example.test",
    "a/b@example.test",
    "..%2f@example.test/x",
    '"a/b"@example.test',
    '"../../x"@example.test',
    '"a b"@example.test',
    '"a\\\\b"@example.test',
    '"a@b"@example.test',
    '"."@example.test',
    '"a\x00b"@example.test',
    "a\x00b@example.test",
    "a\x07b@example.test",
    "a\u202eb@example.test",  # right-to-left override
    "a\u200bb@example.test",  # zero-width space
    "x" * 65 + "@example.test",
    "é" * 33 + "@example.test",  # 33 characters, 66 octets
    "alice@../x",
    "alice@",
    "@example.test",
    "",
    "alice@example.test trailing",
]


@pytest.mark.parametrize("address", UNSAFE)
def test_unsafe_local_parts_bounce(
    agent: LocalDelivery, tmp_path: Path, address: str
) -> None:
    result = deliver(agent, address)

    assert result.status == BOUNCED
    assert result.reply == BAD_MAILBOX
    assert (result.reply.code, result.reply.enhanced) == (553, "5.1.3")
    # Nothing was created, inside the mailbox directory or out of it.
    assert sorted(tmp_path.rglob("*")) == []


def test_longest_local_part_is_accepted(agent: LocalDelivery) -> None:
    assert deliver(agent, "x" * 64 + "@example.test").status == DELIVERED


# -- failures -------------------------------------------------------------------


def fail_writes(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    real_write = os.write
    calls = 0

    def write(fd: int, data: bytes) -> int:
        # The first write succeeds in part, so a file does exist.
        nonlocal calls
        calls += 1
        if calls > 1:
            raise OSError(code, os.strerror(code))
        return real_write(fd, data[:5])

    # maildir.os is os: this patches the one os module, for the test only.
    monkeypatch.setattr(os, "write", write)


@pytest.mark.parametrize(
    ("code", "enhanced"),
    [(errno.ENOSPC, "4.3.1"), (errno.EDQUOT, "4.2.2"), (errno.EIO, "4.3.0")],
)
def test_write_failure_defers_and_leaves_nothing(
    agent: LocalDelivery,
    mailboxes: Path,
    monkeypatch: pytest.MonkeyPatch,
    code: int,
    enhanced: str,
) -> None:
    fail_writes(monkeypatch, code)
    result = deliver(agent, "carol@example.test")

    assert result.status == DEFERRED
    assert result.reply.code // 100 == 4
    assert result.reply.enhanced == enhanced
    # The reply names the error, never a path.
    assert str(mailboxes) not in result.reply.text
    assert all_files(mailboxes) == []


def _failing(name: str, code: int) -> Callable[..., None]:
    def fail(*args: object) -> None:
        raise OSError(code, os.strerror(code), name)

    return fail


def test_rename_failure_leaves_no_tmp_file(
    agent: LocalDelivery, mailboxes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "rename", _failing("rename", errno.EXDEV))
    result = deliver(agent, "carol@example.test")
    assert result.status == DEFERRED
    assert result.reply.enhanced == "4.3.0"
    assert all_files(mailboxes) == []


def test_directory_fsync_failure_withdraws_the_message(
    agent: LocalDelivery, mailboxes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Once the message is in new/, only the fsync of new/ can fail:
    # the message is withdrawn so that the retry is the only copy.
    deliver(agent, "carol@example.test")  # directories exist now
    maildir = mailboxes / "example.test" / "carol" / "Maildir"
    [first] = new_files(maildir)
    monkeypatch.setattr(maildir_mod, "fsync_dir", _failing("fsync", errno.EIO))
    assert deliver(agent, "carol@example.test").status == DEFERRED
    assert new_files(maildir) == [first]
    assert list((maildir / "tmp").iterdir()) == []


def test_unwritable_mailbox_dir_defers(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    agent = LocalDelivery(blocker / "mailboxes", "mx.example.test")
    result = deliver(agent, "carol@example.test")
    assert result.status == DEFERRED
    assert result.reply.enhanced == "4.3.0"
    assert "Not a directory" in result.reply.text
    assert str(tmp_path) not in result.reply.text


# -- threads ----------------------------------------------------------------------


def test_concurrent_deliveries_get_unique_names(
    agent: LocalDelivery, mailboxes: Path
) -> None:
    threads, per_thread = 8, 25
    results = []
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def work() -> None:
        start.wait()
        for _ in range(per_thread):
            result = deliver(agent, "carol@example.test")
            with lock:
                results.append(result.status)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=10)

    assert results == [DELIVERED] * (threads * per_thread)
    files = new_files(mailboxes / "example.test" / "carol" / "Maildir")
    assert len(files) == threads * per_thread
    assert all(NAME.fullmatch(p.name) for p in files)


def test_two_agents_in_one_process_get_unique_names(mailboxes: Path) -> None:
    # Two instances share the pid and may share a microsecond: the
    # counter that tells their names apart must be the process's.
    a = LocalDelivery(mailboxes, "mx.example.test")
    b = LocalDelivery(mailboxes, "mx.example.test")
    for _ in range(50):
        assert deliver(a, "carol@example.test").status == DELIVERED
        assert deliver(b, "carol@example.test").status == DELIVERED
    files = new_files(mailboxes / "example.test" / "carol" / "Maildir")
    assert len(files) == 100
