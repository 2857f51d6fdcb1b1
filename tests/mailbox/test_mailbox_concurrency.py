"""Several processes writing one folder at once: local delivery adding
files to new/, sessions appending and refreshing. No UID may be given
twice, and every message must end up with exactly one."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from postroom.mailbox import maildir
from postroom.mailbox.store import MailStore

USER = "alice@example.test"
PROCESSES = 4
EACH = 25


def _worker(root: str, n: int, queue: multiprocessing.Queue[list[int]]) -> None:
    store = MailStore(Path(root), fsync=False)
    box = store.open(USER)
    appended = []
    for i in range(EACH):
        if i % 2:
            appended.append(box.append(f"Subject: {n}-{i}\r\n\r\n".encode()))
        else:
            # As local delivery does it, without the index.
            tmp, base = maildir.write_tmp(
                box.directory, [f"Subject: {n}-{i}\r\n\r\n".encode()], fsync=False
            )
            maildir.publish(tmp, box.directory / "new" / base, fsync=False)
        box.refresh()
        if i % 5 == 0:
            box.store_flags([m.uid for m in box.messages()[:3]], ["\\Seen"], "add")
    box.refresh()
    queue.put(appended)
    box.close()


def test_concurrent_writers_never_share_a_uid(tmp_path: Path) -> None:
    root = tmp_path / "mailboxes"
    store = MailStore(root, fsync=False)
    store.ensure_user(USER)
    ctx = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[list[int]] = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(str(root), n, queue))
        for n in range(PROCESSES)
    ]
    for proc in procs:
        proc.start()
    appended = [uid for _ in procs for uid in queue.get(timeout=120)]
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0

    # APPEND's answers (UIDPLUS) were all different.
    assert len(appended) == len(set(appended))
    box = store.open(USER)
    messages = box.messages()
    total = PROCESSES * EACH
    assert [m.uid for m in messages] == list(range(1, total + 1))
    assert box.uidnext == total + 1
    subjects = {box.read(m.uid) for m in messages}
    assert len(subjects) == total
    assert list((box.directory / "new").iterdir()) == []
    # Every file is numbered exactly once.
    assert len(list((box.directory / "cur").iterdir())) == total
