"""Names that become paths: nothing a client sends may leave the
user's directory, and modified UTF-7 round-trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from postroom.errors import BadMailboxName
from postroom.mailbox import names
from postroom.mailbox.store import MailStore
from postroom.protocol.imap import utf7

USER = "alice@example.test"

ESCAPES = [
    "",
    "..",
    ".",
    "../x",
    "a/../../b",
    "/etc",
    "/",
    "a/b",
    "a\\b",
    "a..b",
    ".hidden",
    "trailing.",
    "a\x00b",
    "a\nb",
    "a\x7fb",
    "a\u202eb",  # right-to-left override
    "a\u200bb",  # zero-width space
    "x" * 300,
]


@pytest.mark.parametrize("name", ESCAPES)
def test_folder_names_that_could_escape_are_refused(name: str) -> None:
    with pytest.raises(BadMailboxName):
        names.folder_name(name)


@pytest.mark.parametrize("name", ESCAPES)
def test_store_refuses_them_and_writes_nothing_outside(
    tmp_path: Path, name: str
) -> None:
    store = MailStore(tmp_path / "mailboxes", fsync=False)
    store.ensure_user(USER)
    before = sorted(tmp_path.rglob("*"))
    for call in (store.create, store.delete):
        with pytest.raises(BadMailboxName):
            call(USER, name)
    with pytest.raises(BadMailboxName):
        store.open(USER, name)
    with pytest.raises(BadMailboxName):
        store.rename(USER, "Sent", name)
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize(
    "user",
    [
        "../x@example.test",
        "a/b@example.test",
        "a@../x",
        "a@",
        "@x",
        ".a@x.test",
        "a\x00@x.test",
        "a@x/y",
    ],
)
def test_unusable_users_are_refused(tmp_path: Path, user: str) -> None:
    with pytest.raises(BadMailboxName):
        names.user_maildir(tmp_path, user)


def test_user_maildir_layout(tmp_path: Path) -> None:
    assert names.user_maildir(tmp_path, "Alice@Example.TEST") == (
        tmp_path / "example.test" / "alice" / "Maildir"
    )
    assert names.user_maildir(tmp_path, "josé@bücher.test") == (
        tmp_path / "xn--bcher-kva.test" / "josé" / "Maildir"
    )


@pytest.mark.parametrize(
    ("name", "canonical", "directory"),
    [
        ("inbox", "INBOX", ""),
        ("Inbox.Sub", "INBOX.Sub", ".INBOX.Sub"),
        ("Sent", "Sent", ".Sent"),
        ("Work.Projects.2026", "Work.Projects.2026", ".Work.Projects.2026"),
        ("Entwürfe", "Entwürfe", ".Entw&APw-rfe"),
        ("A&B", "A&B", ".A&-B"),
        ("日本語", "日本語", ".&ZeVnLIqe-"),
        ("with space", "with space", ".with space"),
    ],
)
def test_folder_directories(
    tmp_path: Path, name: str, canonical: str, directory: str
) -> None:
    assert names.folder_name(name) == canonical
    expected = tmp_path / directory if directory else tmp_path
    assert names.folder_dir(tmp_path, canonical) == expected
    if directory:
        assert names.name_from_dir(directory) == canonical


@pytest.mark.parametrize(
    "text",
    [
        "",
        "plain",
        "&",
        "a&b",
        "é",
        "日本語",
        "~peter/mail/台北/日本語",
        "\U0001f600 smile",
    ],
)
def test_mutf7_round_trip(text: str) -> None:
    assert utf7.decode(utf7.encode(text)) == text


def test_mutf7_matches_rfc_3501_example() -> None:
    # RFC 3501 §5.1.3.
    assert utf7.encode("~peter/mail/台北/日本語") == (
        "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
    )


@pytest.mark.parametrize("bad", ["&", "&Jjo", "&***-", "é"])
def test_malformed_mutf7_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        utf7.decode(bad)
