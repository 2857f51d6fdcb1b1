"""Folders: the defaults and their SPECIAL-USE roles, create, delete,
rename, subscriptions, and the POP3 lock across processes."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from postroom.errors import MailboxError, MailboxExists, MailboxLocked, NoSuchMailbox
from postroom.mailbox.store import FolderInfo, MailStore

USER = "alice@example.test"
MESSAGE = b"Subject: x\r\n\r\nx\r\n"


@pytest.fixture
def store(tmp_path: Path) -> MailStore:
    return MailStore(tmp_path / "mailboxes", fsync=False)


def test_defaults_with_roles(store: MailStore) -> None:
    assert store.list_mailboxes(USER) == [
        FolderInfo("INBOX", None, True),
        FolderInfo("Drafts", "\\Drafts", True),
        FolderInfo("Junk", "\\Junk", True),
        FolderInfo("Sent", "\\Sent", True),
        FolderInfo("Trash", "\\Trash", True),
    ]
    root = store.maildir(USER)
    # Maildir++ on disk, readable by Dovecot and mutt.
    for name in ("cur", "new", "tmp", ".Sent/cur", ".Drafts/new", ".Trash/tmp"):
        assert (root / name).is_dir()
    assert (root / "subscriptions").read_text().split() == [
        "INBOX",
        "Sent",
        "Drafts",
        "Trash",
        "Junk",
    ]


def test_deleted_default_stays_deleted(store: MailStore) -> None:
    store.delete(USER, "Junk")
    assert "Junk" not in [f.name for f in store.list_mailboxes(USER)]
    store.ensure_user(USER)
    assert "Junk" not in [f.name for f in store.list_mailboxes(USER)]


def test_create_nested_and_list(store: MailStore) -> None:
    store.create(USER, "Work.Projects.Entwürfe")
    listed = [f.name for f in store.list_mailboxes(USER)]
    assert "Work" in listed
    assert "Work.Projects" in listed
    assert "Work.Projects.Entwürfe" in listed
    assert (store.maildir(USER) / ".Work.Projects.Entw&APw-rfe" / "cur").is_dir()
    with pytest.raises(MailboxExists):
        store.create(USER, "Work")
    with pytest.raises(MailboxExists):
        store.create(USER, "inbox")


def test_open_missing_folder(store: MailStore) -> None:
    with pytest.raises(NoSuchMailbox):
        store.open(USER, "Nope")


def test_delete_rules(store: MailStore) -> None:
    with pytest.raises(MailboxError):
        store.delete(USER, "INBOX")
    with pytest.raises(NoSuchMailbox):
        store.delete(USER, "Nope")
    store.create(USER, "A.B")
    with pytest.raises(MailboxError, match="sub-folders"):
        store.delete(USER, "A")
    store.delete(USER, "A.B")
    store.delete(USER, "A")
    assert [f.name for f in store.list_mailboxes(USER) if f.name.startswith("A")] == []


def test_rename_moves_children_and_role(store: MailStore) -> None:
    store.create(USER, "Sent.2025")
    with store.open(USER, "Sent") as box:
        uid = box.append(MESSAGE)
        validity = box.uidvalidity
    store.rename(USER, "Sent", "Archive.Sent")
    listed = {f.name: f.special_use for f in store.list_mailboxes(USER)}
    assert listed["Archive.Sent"] == "\\Sent"
    assert "Archive.Sent.2025" in listed
    assert "Sent" not in listed
    with store.open(USER, "Archive.Sent") as box:
        assert [m.uid for m in box.messages()] == [uid]
        assert box.uidvalidity == validity
    with pytest.raises(MailboxExists):
        store.rename(USER, "Drafts", "Trash")
    with pytest.raises(NoSuchMailbox):
        store.rename(USER, "Nope", "Other")
    with pytest.raises(MailboxError):
        store.rename(USER, "Drafts", "Drafts.Sub")


def test_rename_inbox_moves_its_messages(store: MailStore) -> None:
    with store.open(USER) as inbox:
        inbox.append(MESSAGE)
        inbox.append(MESSAGE)
    store.rename(USER, "INBOX", "Old")
    with store.open(USER) as inbox:
        assert inbox.messages() == []
    with store.open(USER, "Old") as old:
        assert len(old.messages()) == 2


def test_subscriptions(store: MailStore) -> None:
    store.subscribe(USER, "Later.Folder", True)  # need not exist
    store.subscribe(USER, "Junk", False)
    store.create(USER, "Later.Folder")
    listed = {f.name: f.subscribed for f in store.list_mailboxes(USER)}
    assert listed["Later.Folder"] is True
    assert listed["Later"] is False
    assert listed["Junk"] is False


def _try_lock(root: str, queue: multiprocessing.Queue[str]) -> None:
    store = MailStore(Path(root), fsync=False)
    try:
        with store.pop3_lock(USER):
            queue.put("locked")
    except MailboxLocked:
        queue.put("refused")


def test_pop3_lock_is_exclusive_across_processes(store: MailStore) -> None:
    ctx = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[str] = ctx.Queue()
    with store.pop3_lock(USER):
        # Same process, another session: refused at once.
        with pytest.raises(MailboxLocked), store.pop3_lock(USER):
            pass
        proc = ctx.Process(target=_try_lock, args=(str(store.root), queue))
        proc.start()
        assert queue.get(timeout=30) == "refused"
        proc.join(30)
    proc = ctx.Process(target=_try_lock, args=(str(store.root), queue))
    proc.start()
    assert queue.get(timeout=30) == "locked"
    proc.join(30)
