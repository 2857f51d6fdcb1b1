"""Aliases through the whole node: accepted by SMTP, expanded into the
queue, delivered by the engine to each account's INBOX and relayed to
the remote target (a fake provider on the test stage)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from postroom.mailbox.store import MailStore
from postroom.testing.process import PostroomProcess
from postroom.testing.stage import (
    INVITATION,
    ORGANISER,
    Stage,
    open_stage,
    send,
    wait_until,
)


@pytest.fixture
def stage() -> Iterator[Stage]:
    with open_stage() as opened:
        yield opened


def test_alias_delivers_to_each_account_and_forwards(
    stage: Stage, postroom_factory: Callable[..., PostroomProcess]
) -> None:
    node = postroom_factory(stage.settings(), start=False)
    for user in ("bob", "carol"):
        node.add_user(f"{user}@postroom.test", "pw")
    node.start()
    done = node.cli(
        "alias",
        "add",
        "team@postroom.test",
        "bob@postroom.test",
        "carol@postroom.test",
        "fan@gmail.test",
    )
    assert done.returncode == 0, done.stderr

    send(node, ["team@postroom.test"], INVITATION)

    store = MailStore(node.data_dir / "mailboxes")
    for user in ("bob", "carol"):
        address = f"{user}@postroom.test"
        inbox = store.maildir(address) / "new"
        wait_until(lambda inbox=inbox: inbox.is_dir() and any(inbox.iterdir()))
        with store.open(address) as box:
            [info] = box.messages()
            data = box.read(info.uid)
        assert data.startswith(
            f"Return-Path: <{ORGANISER}>\r\nDelivered-To: {address}\r\n".encode()
        )
        assert data.endswith(INVITATION)

    provider = stage.providers["gmail.test"]
    wait_until(lambda: any(t.accepted for t in provider.transactions))
    [transaction] = [t for t in provider.transactions if t.accepted]
    assert transaction.recipients == ["fan@gmail.test"]
    assert transaction.sender == ORGANISER
