"""Quota sizes as the CLI and the configuration write them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from postroom.mailbox import quota
from postroom.mailbox.store import MailStore

USER = "alice@example.test"


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0", 0),
        ("1024", 1024),
        ("500M", 500 << 20),
        ("2g", 2 << 30),
        ("1.5K", 1536),
        ("10MB", 10 << 20),
        ("1_000", 1000),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert quota.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "-1", "ten", "inf", "nan", "-inf", "1e999"])
def test_parse_size_refuses_non_sizes(text: str) -> None:
    # "inf" and "nan" pass float(); they used to escape as OverflowError
    # or a bare ValueError from int() (a traceback from the CLI).
    with pytest.raises(ValueError, match="size"):
        quota.parse_size(text)


def test_usage_skips_a_folder_left_half_deleted(tmp_path: Path) -> None:
    # MailStore.delete renames a folder to "..deleted-*" and then
    # removes it; a crash in between must not eat the user's quota.
    store = MailStore(tmp_path / "mailboxes", fsync=False)
    store.create(USER, "Old")
    with store.open(USER, "Old") as box:
        box.append(b"x" * 1000)
    root = store.maildir(USER)
    assert store.usage(USER) == 1000

    os.rename(root / ".Old", root / "..deleted-1-Old")

    assert store.usage(USER) == 0
    assert "Old" not in [f.name for f in store.list_mailboxes(USER)]


def test_the_usage_cache_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One entry per folder directory of every user counted: a worker
    # that lives for months must not keep one per account for ever.
    monkeypatch.setattr(quota, "_CACHE_LIMIT", 4)
    monkeypatch.setattr(quota, "_TRUST_NS", 0)
    monkeypatch.setattr(quota, "_cache", {})
    store = MailStore(tmp_path / "mailboxes", fsync=False)
    for n in range(10):
        user = f"user{n}@example.test"
        store.ensure_user(user)
        assert store.usage(user) == 0

    assert 0 < len(quota._cache) <= 4
