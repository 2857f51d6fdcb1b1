"""``postroom queue ...`` through the real entry point.

The spool stays open (as a running server would hold it) while the
commands run: the CLI must work beside it without taking its lock.
"""

from __future__ import annotations

import importlib
import json
import sys
import types
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from postroom.cli import main as cli
from postroom.ids import new_queue_id
from postroom.queue.envelope import Envelope, Recipient
from postroom.queue.spool import Spool
from postroom.store import db

Run = Callable[..., tuple[int, str, str]]

CONTENT = (b"From: Alice <alice@example.org>\r\nSubject: caf\xc3\xa9\r\n"
           b"\r\nThe body line.\r\n")


@pytest.fixture(autouse=True)
def sibling_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    # main.build_parser imports every command group; while one is still
    # being written by someone else, stand in an empty one.
    for name in ("serve", "send", "user"):
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
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "postroom.toml"
    path.write_text(f'data_dir = "{tmp_path / "data"}"\n')
    return path


@pytest.fixture
async def spool(config_file: Path) -> AsyncIterator[Spool]:
    data = config_file.parent / "data"
    data.mkdir()
    s = Spool(data / "spool", db.create_engine(f"sqlite:///{data / 'postroom.db'}"))
    await s.start()
    yield s
    await s.close()


@pytest.fixture
def run(config_file: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    """``postroom -c CONFIG queue ARGV...`` -> (status, stdout, stderr)."""
    def run(*argv: str) -> tuple[int, str, str]:
        status = cli.main(["-c", str(config_file), "queue", *argv])
        out, err = capsys.readouterr()
        return status, out, err
    return run


def envelope(received_at: float = 1_700_000_000.0) -> Envelope:
    return Envelope(
        queue_id=new_queue_id(), sender="alice@example.org",
        recipients=[
            Recipient("bob@example.net", notify=("SUCCESS", "FAILURE"),
                      orcpt="rfc822;bob@example.net"),
            Recipient("carol@example.net", notify=()),
        ],
        received_at=received_at, body="8BITMIME", smtputf8=True, ret="HDRS",
        envid="QQ314159", client_address="192.0.2.1",
        client_helo="client.example.org", listener="relay:2525")


def test_list_without_any_queue(run: Run, config_file: Path) -> None:
    assert run("list") == (0, "Mail queue is empty\n", "")
    assert run("list", "--json") == (0, "[]\n", "")
    # Asking must not create a database beside the user.
    assert not (config_file.parent / "data").exists()


async def test_list_empty_queue(run: Run, spool: Spool) -> None:
    assert run("list") == (0, "Mail queue is empty\n", "")


async def test_list_like_mailq(run: Run, spool: Spool) -> None:
    first, second = envelope(1_700_000_000.0), envelope(1_700_000_060.0)
    second.sender = ""
    await spool.commit(first, CONTENT)
    await spool.commit(second, b"x" * 2000)

    status, out, err = run("list")
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith("-Queue ID-")
    assert lines[1].startswith(f"{first.queue_id}  {len(CONTENT):>8} ")
    assert lines[1].endswith(" alice@example.org")
    # Recipients line up under the sender.
    column = lines[1].index(" alice@example.org") + 1
    assert lines[2] == " " * column + "bob@example.net (queued)"
    assert lines[3] == " " * column + "carol@example.net (queued)"
    assert lines[4] == ""
    assert lines[5].startswith(f"{second.queue_id}  ")
    assert lines[5].endswith(" <>")
    assert lines[-1] == "-- 3 Kbytes in 2 Requests."


async def test_list_json(run: Run, spool: Spool) -> None:
    env = envelope()
    await spool.commit(env, CONTENT)

    status, out, _ = run("list", "--json")
    assert status == 0
    assert json.loads(out) == [{
        "queue_id": env.queue_id,
        "state": "queued",
        "size": len(CONTENT),
        "received_at": "2023-11-14T22:13:20+00:00",
        "sender": "alice@example.org",
        "recipients": [
            {"address": "bob@example.net", "state": "queued",
             "notify": ["SUCCESS", "FAILURE"],
             "orcpt": "rfc822;bob@example.net",
             "attempts": 0, "last_reply": None, "next_attempt": None},
            {"address": "carol@example.net", "state": "queued",
             "notify": [], "orcpt": None,
             "attempts": 0, "last_reply": None, "next_attempt": None},
        ],
    }]


async def test_show_envelope_and_headers(run: Run, spool: Spool) -> None:
    env = envelope()
    await spool.commit(env, CONTENT)

    status, out, err = run("show", env.queue_id)
    assert (status, err) == (0, "")
    assert out == (
        f"Queue-ID: {env.queue_id}\n"
        "State: queued\n"
        "Arrival: 2023-11-14T22:13:20+00:00\n"
        f"Size: {len(CONTENT)}\n"
        "Spool: main\n"
        "Sender: <alice@example.org> BODY=8BITMIME RET=HDRS ENVID=QQ314159"
        " SMTPUTF8\n"
        "Recipient: <bob@example.net> NOTIFY=SUCCESS,FAILURE"
        " ORCPT=rfc822;bob@example.net (queued)\n"
        "Recipient: <carol@example.net> NOTIFY=NEVER (queued)\n"
        "Client: 192.0.2.1 helo=client.example.org\n"
        "Listener: relay:2525\n"
        "\n"
        "From: Alice <alice@example.org>\n"
        "Subject: caf\u00e9\n"
        "\n")

    status, out, _ = run("show", "--body", env.queue_id)
    assert status == 0
    assert out.endswith("Subject: caf\u00e9\n\nThe body line.\n")


async def test_delete_ids_and_all(run: Run, spool: Spool) -> None:
    envs = [envelope(), envelope(), envelope()]
    for e in envs:
        await spool.commit(e, CONTENT)

    assert run("delete", envs[0].queue_id) == (0, "Deleted 1 message\n", "")
    out = run("list")[1]
    assert envs[0].queue_id not in out and envs[1].queue_id in out

    assert run("delete", "--all") == (0, "Deleted 2 messages\n", "")
    assert run("list") == (0, "Mail queue is empty\n", "")


async def test_delete_needs_ids_or_all(run: Run, spool: Spool) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run("delete")
    assert exit_info.value.code == 2


@pytest.mark.parametrize("argv", [
    ("show", "0NOPE"),
    ("show", "--body", "0NOPE"),
    ("delete", "0NOPE"),
])
async def test_unknown_id_is_one_line_error(run: Run, spool: Spool,
                                           argv: tuple[str, ...]) -> None:
    assert run(*argv) == (1, "", "postroom: no message with queue id 0NOPE\n")


async def test_delete_with_one_unknown_id_deletes_nothing(
        run: Run, spool: Spool) -> None:
    env = envelope()
    await spool.commit(env, CONTENT)
    assert run("delete", env.queue_id, "0NOPE") == (
        1, "", "postroom: no message with queue id 0NOPE\n")
    assert env.queue_id in run("list")[1]


async def test_several_spools(run: Run, spool: Spool, config_file: Path) -> None:
    # A second worker's spool beside the fixture's ("main").
    data = config_file.parent / "data"
    other = Spool(data / "spool",
                  db.create_engine(f"sqlite:///{data / 'postroom.db'}"),
                  name="w1")
    await other.start()
    mine, theirs = envelope(1_700_000_000.0), envelope(1_700_000_060.0)
    await spool.commit(mine, CONTENT)
    await other.commit(theirs, CONTENT + b"more\r\n")

    out = run("list")[1]
    assert mine.queue_id in out and theirs.queue_id in out
    status, out, _ = run("show", "--body", theirs.queue_id)
    assert status == 0
    assert "\nSpool: w1\n" in out
    assert out.endswith("The body line.\nmore\n")
    assert "\nSpool: main\n" in run("show", mine.queue_id)[1]

    assert run("delete", mine.queue_id, theirs.queue_id) == (
        0, "Deleted 2 messages\n", "")
    assert run("list") == (0, "Mail queue is empty\n", "")
    await other.close()


def test_unknown_id_without_any_queue(run: Run) -> None:
    assert run("show", "0NOPE") == (
        1, "", "postroom: no message with queue id 0NOPE\n")


def states(spool: Spool, queue_id: str) -> tuple[str, dict[str, tuple[str, bool]]]:
    """The message's state, and each recipient's (state, bounce_now)."""
    import sqlalchemy as sa

    from postroom.store import queue as tables
    with spool._engine.connect() as conn:
        message = conn.execute(sa.select(tables.messages.c.state).where(
            tables.messages.c.queue_id == queue_id)).scalar_one()
        rcpts = conn.execute(sa.select(
            tables.recipients.c.address, tables.recipients.c.state,
            tables.recipients.c.bounce_now).where(
            tables.recipients.c.queue_id == queue_id)).all()
    return message, {a: (s, bool(b)) for a, s, b in rcpts}


async def test_hold_release_by_id_and_filter(run: Run, spool: Spool) -> None:
    mine, other = envelope(), envelope()
    other.sender = "zed@example.com"
    for e in (mine, other):
        await spool.commit(e, CONTENT)

    assert run("hold", "--from", "alice@example.org") == (
        0, "Held 1 message\n", "")
    assert states(spool, mine.queue_id)[0] == "held"
    assert states(spool, other.queue_id)[0] == "queued"
    # mailq's "!" marks a held message.
    assert f"{mine.queue_id}!" in run("list")[1]
    assert run("hold", other.queue_id, mine.queue_id) == (
        0, "Held 1 message\n", "")  # mine was held already
    assert run("release", "--state", "held") == (0, "Released 2 messages\n", "")
    assert states(spool, mine.queue_id)[0] == "queued"


async def test_bounce_marks_pending_recipients(run: Run, spool: Spool) -> None:
    env = envelope()
    await spool.commit(env, CONTENT)
    run("hold", env.queue_id)
    status, out, err = run("bounce", env.queue_id)
    assert (status, err) == (0, "")
    assert out == "Bouncing 2 recipients of 1 message; the senders get a notice\n"
    message, rcpts = states(spool, env.queue_id)
    assert message == "queued"  # released, for the engine to bounce
    assert rcpts == {"bob@example.net": ("queued", True),
                     "carol@example.net": ("queued", True)}


async def test_delete_by_filter(run: Run, spool: Spool) -> None:
    keep, drop = envelope(), envelope()
    drop.recipients = [Recipient("x@spam.example")]
    for e in (keep, drop):
        await spool.commit(e, CONTENT)
    assert run("delete", "--domain", "spam.example") == (
        0, "Deleted 1 message\n", "")
    out = run("list")[1]
    assert keep.queue_id in out and drop.queue_id not in out
    with pytest.raises(SystemExit):
        run("delete", "--all", "--domain", "x.example")


async def test_flush_and_summary(run: Run, spool: Spool) -> None:
    import time
    now = time.time()
    old, new = envelope(now - 3600), envelope(now - 60)
    for e in (old, new):
        await spool.commit(e, CONTENT)
    status, out, _ = run("summary")
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ["T", "5", "10", "20", "40", "80", "160", "320",
                                "640", "1280", "1280+"]
    total = lines[1].split()
    assert total[:2] == ["TOTAL", "4"]
    # Two recipients a minute old, two an hour old (40-80 minutes).
    assert total[2] == "2" and total[6] == "2"
    assert lines[2].split()[:2] == ["example.net", "4"]
    summary = json.loads(run("summary", "--json")[1])
    assert summary["example.net"]["total"] == 4

    # Nothing is deferred, so nothing is made due sooner.
    assert run("flush") == (0, "Flushed: 0 recipients due now\n", "")
    assert run("flush", "--domain", "example.net")[0] == 0
    assert run("flush", "0NOPE") == (
        1, "", "postroom: no message with queue id 0NOPE\n")
