"""The index: UIDs that survive restarts, are never reused, and follow
what other programs do to the Maildir."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from postroom.errors import MailboxError
from postroom.mailbox import index, maildir
from postroom.mailbox.store import Mailbox, MailStore

USER = "alice@example.test"
MESSAGE = b"From: bob@example.test\r\nSubject: hi\r\n\r\nbody\r\n"


@pytest.fixture
def store(tmp_path: Path) -> MailStore:
    return MailStore(tmp_path / "mailboxes", fsync=False)


def deliver(folder: Path, data: bytes = MESSAGE) -> str:
    """What local delivery does: tmp/, then new/. Returns the base name."""
    tmp, base = maildir.write_tmp(folder, [data], fsync=False)
    maildir.publish(tmp, folder / "new" / base, fsync=False)
    return base


def uids(box: Mailbox) -> list[int]:
    return [m.uid for m in box.messages()]


def test_new_mailbox_starts_empty(store: MailStore) -> None:
    with store.open(USER) as box:
        assert box.messages() == []
        assert box.uidnext == 1
        assert box.uidvalidity > 0


def test_delivered_messages_get_uids_in_arrival_order(store: MailStore) -> None:
    box = store.open(USER)
    bases = [deliver(box.directory, MESSAGE + bytes([65 + i])) for i in range(3)]
    changes = box.refresh()
    assert [m.uid for m in changes.new] == [1, 2, 3]
    for uid, base in zip([1, 2, 3], bases, strict=True):
        assert box.path(uid).name.startswith(base)
        assert box.read(uid).endswith(bytes([64 + uid]))
    # Readers move what they have seen to cur/, with an empty info.
    assert list((box.directory / "new").iterdir()) == []
    assert all(p.name.endswith(":2,") for p in (box.directory / "cur").iterdir())
    assert box.recent == {1, 2, 3}
    assert box.uidnext == 4


def test_index_survives_a_restart(store: MailStore, tmp_path: Path) -> None:
    box = store.open(USER)
    for _ in range(3):
        deliver(box.directory)
    box.refresh()
    box.store_flags([2], ["\\Seen", "$Important"], "set")
    before = (box.uidvalidity, box.messages(), box.uidnext)
    box.close()

    again = MailStore(tmp_path / "mailboxes").open(USER)
    assert (again.uidvalidity, again.messages(), again.uidnext) == before
    # Nobody is \Recent twice.
    assert again.recent == set()


def test_uids_are_never_reused(store: MailStore) -> None:
    box = store.open(USER)
    deliver(box.directory)
    deliver(box.directory)
    box.refresh()
    assert box.expunge([2]) == [2]
    box.close()

    box = store.open(USER)
    deliver(box.directory)
    box.refresh()
    assert uids(box) == [1, 3]
    assert box.uidnext == 4


def test_external_add_and_remove_are_picked_up(store: MailStore) -> None:
    box = store.open(USER)
    deliver(box.directory)
    deliver(box.directory)
    box.refresh()
    os.unlink(box.path(1))
    # A file another server put straight into cur/, with flags.
    name = f"{maildir.unique_name()},S={len(MESSAGE)}:2,FS"
    (box.directory / "cur" / name).write_bytes(MESSAGE)

    changes = box.refresh()
    assert changes.expunged == [1]
    [new] = changes.new
    assert new.uid == 3
    assert new.flags == {"\\Flagged", "\\Seen"}
    assert uids(box) == [2, 3]


def test_two_objects_see_each_others_changes(store: MailStore) -> None:
    a = store.open(USER)
    b = store.open(USER)
    deliver(a.directory)
    deliver(a.directory)
    assert [m.uid for m in a.refresh().new] == [1, 2]
    assert [m.uid for m in b.refresh().new] == [1, 2]
    # The first to look is the one the messages are \Recent for.
    assert (a.recent, b.recent) == ({1, 2}, set())

    [info] = a.store_flags([1], ["\\Seen"], "add")
    assert info.flags == {"\\Seen"}
    changes = b.refresh()
    assert [(m.uid, m.flags) for m in changes.flags] == [(1, {"\\Seen"})]
    # The object that made a change does not hear of it again.
    assert not a.refresh()

    assert a.expunge([2]) == [2]
    assert b.refresh().expunged == [2]
    uid = b.append(MESSAGE, ["\\Draft"])
    assert uid == 3
    assert [(m.uid, m.flags) for m in a.refresh().new] == [(3, {"\\Draft"})]
    assert [m.uid for m in b.refresh().new] == [3]


def test_refresh_with_no_change_does_not_touch_the_index(
    store: MailStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = store.open(USER)
    deliver(box.directory)
    box.refresh()
    # Make the directory stamps old enough to be trusted.
    old = 1_000_000_000
    for sub in ("new", "cur"):
        os.utime(box.directory / sub, (old, old))
    box.refresh()  # takes the stamp
    calls = []
    monkeypatch.setattr(box._index, "sync", lambda: calls.append(1) or {})
    assert not box.refresh()
    assert calls == []
    # A delivery changes new/'s mtime, and the next refresh looks.
    monkeypatch.undo()
    deliver(box.directory)
    assert [m.uid for m in box.refresh().new] == [2]


def test_flags_round_trip_through_file_names(store: MailStore) -> None:
    box = store.open(USER)
    deliver(box.directory)
    box.refresh()
    flags = ["\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"]
    box.store_flags([1], flags, "set")
    assert box.path(1).name.endswith(":2,DFRST")
    box.store_flags([1], ["\\Flagged", "\\Draft"], "remove")
    assert box.path(1).name.endswith(":2,RST")
    box.store_flags([1], ["$Forwarded", "Work"], "add")
    assert box.path(1).name.endswith(":2,RSTab")
    # Dovecot's own file names the keyword letters as we do.
    assert (box.directory / "dovecot-keywords").read_text() == (
        "0 $Forwarded\n1 Work\n"
    )
    box.close()

    box = store.open(USER)
    assert box.messages()[0].flags == {
        "\\Seen",
        "\\Answered",
        "\\Deleted",
        "$Forwarded",
        "Work",
    }
    # The Maildir "passed" flag has no IMAP name and is kept.
    path = box.path(1)
    os.rename(path, path.with_name(path.name.replace(":2,RST", ":2,PRST")))
    box.refresh()
    box.store_flags([1], ["\\Seen"], "remove")
    assert box.path(1).name.endswith(":2,PRTab")


def test_flags_changed_by_mutt_are_seen(store: MailStore) -> None:
    # mutt marks a message read by renaming it, without our index.
    box = store.open(USER)
    deliver(box.directory)
    box.refresh()
    path = box.path(1)
    os.rename(path, path.with_name(path.name + "RS"))
    changes = box.refresh()
    assert [(m.uid, m.flags) for m in changes.flags] == [(1, {"\\Seen", "\\Answered"})]
    # And a rename we did not see yet does not stop our own change.
    path = box.path(1)
    os.rename(path, path.with_name(path.name.replace("RS", "S")))
    [info] = box.store_flags([1], ["\\Flagged"], "add")
    assert info.flags == {"\\Seen", "\\Flagged"}
    assert box.path(1).name.endswith(":2,FS")


def test_expunge_removes_only_deleted(store: MailStore) -> None:
    box = store.open(USER)
    for _ in range(3):
        deliver(box.directory)
    box.refresh()
    box.store_flags([1, 3], ["\\Deleted"], "add")
    assert box.expunge() == [1, 3]
    assert uids(box) == [2]
    assert len(list((box.directory / "cur").iterdir())) == 1


def test_expunge_follows_a_rename_by_mutt(store: MailStore) -> None:
    # POP3 DELE of a message mutt marked read since our last sync: the
    # renamed file must go too, not come back under a new UID.
    box = store.open(USER)
    deliver(box.directory)
    deliver(box.directory)
    box.refresh()
    path = box.path(1)
    os.rename(path, path.with_name(path.name + "S"))

    assert box.expunge([1]) == [1]

    assert len(list((box.directory / "cur").iterdir())) == 1
    with store.open(USER) as again:
        assert uids(again) == [2]


def test_uidvalidity_changes_when_the_index_is_lost(store: MailStore) -> None:
    box = store.open(USER)
    deliver(box.directory)
    deliver(box.directory)
    box.refresh()
    box.expunge([1])
    box.store_flags([2], ["\\Seen"], "add")
    first = box.uidvalidity
    box.close()
    for path in box.directory.glob(index.INDEX_NAME + "*"):
        path.unlink()

    box = store.open(USER)
    assert box.uidvalidity > first
    # Rebuilt from the Maildir: the message and its flags, a new UID.
    assert [(m.uid, m.flags) for m in box.messages()] == [(1, {"\\Seen"})]


def test_a_broken_index_is_rebuilt(store: MailStore) -> None:
    box = store.open(USER)
    deliver(box.directory)
    box.refresh()
    first = box.uidvalidity
    box.close()
    for path in box.directory.glob(index.INDEX_NAME + "-*"):
        path.unlink()
    (box.directory / index.INDEX_NAME).write_bytes(b"not a database" * 100)

    box = store.open(USER)
    assert box.uidvalidity > first
    assert uids(box) == [1]
    assert list(box.directory.glob(index.INDEX_NAME + ".broken-*"))


def test_an_index_out_of_reach_is_not_rebuilt(
    store: MailStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "database is locked" (or EMFILE, ENOSPC) is an OperationalError,
    # a DatabaseError too: it must not pass for corruption, which would
    # renumber the folder under a new UIDVALIDITY.
    box = store.open(USER)
    deliver(box.directory)
    box.refresh()
    first = box.uidvalidity
    box.close()

    def locked(self: index.Index, file: Path) -> None:
        raise sqlite3.OperationalError("database is locked")

    with monkeypatch.context() as patch:
        patch.setattr(index.Index, "_open", locked)
        with pytest.raises(MailboxError, match="locked"):
            store.open(USER)

    assert not list(box.directory.glob(index.INDEX_NAME + ".broken-*"))
    with store.open(USER) as box:
        assert box.uidvalidity == first
        assert uids(box) == [1]


def test_recreated_folder_gets_a_new_uidvalidity(store: MailStore) -> None:
    store.create(USER, "Work")
    with store.open(USER, "Work") as box:
        first = box.uidvalidity
    store.delete(USER, "Work")
    store.create(USER, "Work")
    with store.open(USER, "Work") as box:
        assert box.uidvalidity > first


def test_append_keeps_flags_and_internaldate(store: MailStore) -> None:
    box = store.open(USER)
    uid = box.append(MESSAGE, ["\\Seen", "Work"], internaldate=1_700_000_000.0)
    # Not in the view until refresh reports it.
    assert box.messages() == []
    [info] = box.refresh().new
    assert info.uid == uid
    assert info.size == len(MESSAGE)
    assert info.flags == {"\\Seen", "Work"}
    assert info.internaldate == 1_700_000_000.0
    assert box.read(uid) == MESSAGE
    assert box.path(uid).stat().st_mtime == 1_700_000_000.0


def test_copy_gives_new_uids_and_keeps_flags(store: MailStore) -> None:
    inbox = store.open(USER)
    for _ in range(2):
        deliver(inbox.directory)
    inbox.refresh()
    inbox.store_flags([2], ["\\Flagged", "Label"], "add")
    trash = store.open(USER, "Trash")
    trash.append(MESSAGE)

    assert inbox.copy([2, 1, 99], trash) == [(1, 2), (2, 3)]
    new = trash.refresh().new
    assert [(m.uid, m.flags) for m in new] == [
        (1, frozenset()),
        (2, frozenset()),
        (3, {"\\Flagged", "Label"}),
    ]
    assert trash.read(3) == inbox.read(2)
    # The source is untouched.
    assert not inbox.refresh()


def test_deleted_folder_raises(store: MailStore) -> None:
    store.create(USER, "Work")
    box = store.open(USER, "Work")
    shutil.rmtree(box.directory)
    with pytest.raises(Exception, match="deleted"):
        box.refresh()


def test_too_many_keywords(store: MailStore) -> None:
    box = store.open(USER)
    uid = box.append(MESSAGE)
    box.refresh()
    box.store_flags([uid], [f"k{i}" for i in range(26)], "set")
    with pytest.raises(Exception, match="too many keywords"):
        box.store_flags([uid], ["one-more"], "add")


def test_read_follows_a_rename_by_another_process(store: MailStore) -> None:
    a = store.open(USER)
    b = store.open(USER)
    deliver(a.directory)
    a.refresh()
    b.refresh()
    a.store_flags([1], ["\\Seen"], "add")
    # b has not refreshed; its path is stale, but read still works.
    assert not b.path(1).exists()
    assert b.read(1) == MESSAGE


def test_session_notices_a_rebuilt_index(store: MailStore) -> None:
    from postroom.errors import UidValidityChanged

    box = store.open(USER)
    deliver(box.directory)
    box.refresh()
    for path in box.directory.glob(index.INDEX_NAME + "*"):
        path.unlink()
    with store.open(USER) as rebuilt:
        assert rebuilt.uidvalidity > box.uidvalidity
    with pytest.raises(UidValidityChanged):
        box.refresh()


def test_copy_follows_a_rename_by_another_process(store: MailStore) -> None:
    a = store.open(USER)
    b = store.open(USER)
    deliver(a.directory)
    a.refresh()
    b.refresh()
    a.store_flags([1], ["\\Seen"], "add")
    trash = store.open(USER, "Trash")
    # b's view still has the old file name.
    assert b.copy([1], trash) == [(1, 1)]
    [copied] = trash.refresh().new
    assert copied.flags == {"\\Seen"}
    assert trash.read(1) == MESSAGE


def test_uidnext_moves_with_the_view(store: MailStore) -> None:
    a = store.open(USER)
    b = store.open(USER)
    assert b.append(MESSAGE) == 1
    # a has not seen message 1: its UIDNEXT must not skip past it.
    assert a.uidnext == 1
    a.refresh()
    assert a.uidnext == 2
