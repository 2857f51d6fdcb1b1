"""MailStore: every user's Maildir under one root, and their folders.

Theory of operation
-------------------

Layout: ``<root>/<domain>/<local>/Maildir`` per account (``names``),
INBOX being that Maildir and every other folder a Maildir++ sub-Maildir
``.<name>`` with "." between hierarchy levels. Beside ``cur``/``new``/
``tmp`` the user's Maildir holds files that Maildir readers ignore:

- ``subscriptions``: subscribed folder names, one per line, in modified
  UTF-7, the file Courier and Dovecot use for Maildir++.
- ``postroom-special-use``: ``<role> <name>`` lines (RFC 6154 roles:
  ``\\Sent``, ``\\Drafts``, ``\\Trash``, ``\\Junk``). Its existence also
  marks the user as set up: ``ensure_user`` makes INBOX and the four
  special folders (subscribed) once, so a user who deletes Junk does not
  get it back.
- ``postroom-uidvalidity``: the last UIDVALIDITY handed out (``index``).
- ``postroom-pop3.lock``: flock'd by a POP3 session (RFC 1939 §8).

Every name from a client is checked by ``names`` first:
``BadMailboxName`` for anything that could leave the user's directory.
Folder operations are not atomic across processes beyond what one
``rename``/``mkdir`` gives; concurrent CREATE/RENAME of the same names
by one user's sessions is rare and ends in MailboxExists/NoSuchMailbox.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from postroom.errors import (
    MailboxError,
    MailboxExists,
    MailboxLocked,
    NoSuchMailbox,
    QuotaExceeded,
)
from postroom.mailbox import maildir, names, quota
from postroom.mailbox.messages import Changes, Mailbox, MessageInfo
from postroom.protocol.imap import utf7

__all__ = ["Changes", "FolderInfo", "MailStore", "Mailbox", "MessageInfo"]

SPECIAL_USE_FILE = "postroom-special-use"
SUBSCRIPTIONS_FILE = "subscriptions"
POP3_LOCK_FILE = "postroom-pop3.lock"
DEFAULT_FOLDERS = {
    "Sent": "\\Sent",
    "Drafts": "\\Drafts",
    "Trash": "\\Trash",
    "Junk": "\\Junk",
}


@dataclass(frozen=True, slots=True)
class FolderInfo:
    """One folder for LIST: its name (Unicode, "." between levels), its
    RFC 6154 role or None, and whether the user subscribed to it."""

    name: str
    special_use: str | None
    subscribed: bool


class MailStore:
    """Users' mail under *root* (``<data_dir>/mailboxes``).

    *quota_of* maps an account to its limit in bytes (None or 0: no
    limit); with it, ``Mailbox.append`` and ``copy`` refuse to pass the
    limit with QuotaExceeded. *fsync* False is for tests only.
    """

    def __init__(
        self,
        root: Path,
        *,
        fsync: bool = True,
        quota_of: Callable[[str], int | None] | None = None,
    ) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self.quota_of = quota_of

    # -- users ---------------------------------------------------------------

    def maildir(self, user: str) -> Path:
        """The Maildir of *user*; BadMailboxName for an unusable address."""
        return names.user_maildir(self.root, user)

    def ensure_user(self, user: str) -> Path:
        """Make *user*'s Maildir and default folders if missing; return it."""
        root = self.maildir(user)
        if (root / SPECIAL_USE_FILE).exists():
            return root
        self.root.mkdir(maildir.DIR_MODE, parents=True, exist_ok=True)
        maildir.make_maildir(root, fsync=self.fsync, parents=2)
        for name in DEFAULT_FOLDERS:
            maildir.make_maildir(names.folder_dir(root, name), fsync=self.fsync)
        with self._locked(root / SUBSCRIPTIONS_FILE):
            subscribed = self._subscriptions(root)
            defaults = [names.INBOX, *DEFAULT_FOLDERS]
            subscribed += [n for n in defaults if n not in subscribed]
            self._write_lines(
                root / SUBSCRIPTIONS_FILE, [utf7.encode(n) for n in subscribed]
            )
        # Written last: its presence means "set up" (see the docstring).
        roles = [
            f"{role} {utf7.encode(n)}" for n, role in DEFAULT_FOLDERS.items()
        ]
        with self._locked(root / SPECIAL_USE_FILE):
            self._write_lines(root / SPECIAL_USE_FILE, roles)
        return root

    def usage(self, user: str) -> int:
        """Bytes stored for *user* in all folders."""
        return quota.usage(self.maildir(user))

    def check_quota(self, user: str, extra: int) -> None:
        """Raise QuotaExceeded if *extra* more bytes pass *user*'s quota."""
        limit = self.quota_of(user) if self.quota_of is not None else None
        if limit and self.usage(user) + extra > limit:
            raise QuotaExceeded(f"mailbox full: {user}")

    # -- folders -------------------------------------------------------------

    def open(self, user: str, name: str = names.INBOX) -> Mailbox:
        """Open folder *name* of *user* (the user's Maildir and default
        folders are made on first use).

        Raises BadMailboxName, or NoSuchMailbox when the folder is missing.
        """
        name = names.folder_name(name)
        root = self.ensure_user(user)
        check = None
        if self.quota_of is not None:

            def check(extra: int, user: str = user) -> None:
                self.check_quota(user, extra)

        return Mailbox(
            name,
            names.folder_dir(root, name),
            root,
            fsync=self.fsync,
            check_quota=check,
        )

    def list_mailboxes(self, user: str) -> list[FolderInfo]:
        """Every folder of *user*, INBOX first, then by name."""
        root = self.ensure_user(user)
        roles = self._roles(root)
        subscribed = set(self._subscriptions(root))
        found = [names.INBOX]
        for entry in os.scandir(root):
            name = names.name_from_dir(entry.name)
            if (
                name is not None
                and entry.is_dir()
                and maildir.is_maildir(Path(entry.path))
            ):
                found.append(name)
        found[1:] = sorted(found[1:])
        return [FolderInfo(n, roles.get(n), n in subscribed) for n in found]

    def create(self, user: str, name: str) -> None:
        """Create folder *name* and any missing parents (RFC 3501 §6.3.3).

        Raises MailboxExists, BadMailboxName.
        """
        name = names.folder_name(name)
        root = self.ensure_user(user)
        path = names.folder_dir(root, name)
        if name == names.INBOX or maildir.is_maildir(path):
            raise MailboxExists(f"mailbox exists: {name}")
        parts = name.split(names.DELIMITER)
        for depth in range(1, len(parts)):
            parent = names.DELIMITER.join(parts[:depth])
            if parent != names.INBOX:
                maildir.make_maildir(names.folder_dir(root, parent), fsync=self.fsync)
        maildir.make_maildir(path, fsync=self.fsync)

    def delete(self, user: str, name: str) -> None:
        """Delete folder *name* with its messages.

        INBOX cannot be deleted, nor a folder with sub-folders: RFC 3501
        §6.3.4 would keep such a name as \\Noselect, which Maildir++
        cannot express, so we answer NO instead (the RFC allows it).
        Raises NoSuchMailbox, MailboxError.
        """
        name = names.folder_name(name)
        if name == names.INBOX:
            raise MailboxError("INBOX cannot be deleted")
        root = self.ensure_user(user)
        path = names.folder_dir(root, name)
        if not maildir.is_maildir(path):
            raise NoSuchMailbox(f"no such mailbox: {name}")
        if any(
            i.name.startswith(f"{name}{names.DELIMITER}")
            for i in self.list_mailboxes(user)
        ):
            raise MailboxError(f"mailbox has sub-folders: {name}")
        # Rename out of sight first, so no reader sees half a folder.
        doomed = root / f"..deleted-{os.getpid()}-{path.name[1:]}"
        os.rename(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        self._set_role(root, name, None)

    def rename(self, user: str, old: str, new: str) -> None:
        """Rename folder *old* (and its sub-folders) to *new*.

        Renaming INBOX moves its messages into a new folder *new* and
        leaves INBOX empty (RFC 3501 §6.3.5). A special-use role moves
        with the folder. Raises NoSuchMailbox, MailboxExists.
        """
        old, new = names.folder_name(old), names.folder_name(new)
        root = self.ensure_user(user)
        source, target = names.folder_dir(root, old), names.folder_dir(root, new)
        if not maildir.is_maildir(source):
            raise NoSuchMailbox(f"no such mailbox: {old}")
        if new == names.INBOX or maildir.is_maildir(target):
            raise MailboxExists(f"mailbox exists: {new}")
        if old == names.INBOX:
            self.create(user, new)
            for sub in ("new", "cur"):
                for entry in os.scandir(source / sub):
                    os.rename(entry.path, target / sub / entry.name)
            return
        if new.startswith(old + names.DELIMITER):
            raise MailboxError("cannot rename a mailbox into itself")

        # Children first named, then moved along with their parent.
        children = [
            i.name
            for i in self.list_mailboxes(user)
            if i.name.startswith(old + names.DELIMITER)
        ]
        for parent_depth in range(1, new.count(names.DELIMITER) + 1):
            parent = names.DELIMITER.join(new.split(names.DELIMITER)[:parent_depth])
            if parent != names.INBOX:
                maildir.make_maildir(names.folder_dir(root, parent), fsync=self.fsync)
        os.rename(source, target)
        for child in children:
            moved = new + child[len(old) :]
            os.rename(names.folder_dir(root, child), names.folder_dir(root, moved))
        roles = self._roles(root)
        for name in [old, *children]:
            if name in roles:
                self._set_role(root, name, None)
                self._set_role(root, new + name[len(old) :], roles[name])
        if self.fsync:
            maildir.fsync_dir(root)

    def subscribe(self, user: str, name: str, on: bool) -> None:
        """Add *name* to or remove it from the subscriptions. A name may
        be subscribed while it does not exist (RFC 3501 §6.3.6)."""
        name = names.folder_name(name)
        root = self.ensure_user(user)
        with self._locked(root / SUBSCRIPTIONS_FILE):
            current = self._subscriptions(root)
            if on and name not in current:
                current.append(name)
            elif not on and name in current:
                current.remove(name)
            else:
                return
            self._write_lines(
                root / SUBSCRIPTIONS_FILE, [utf7.encode(n) for n in current]
            )

    @contextlib.contextmanager
    def pop3_lock(self, user: str) -> Iterator[None]:
        """Hold *user*'s maildrop exclusively (RFC 1939 §8: a POP3
        session locks the maildrop). Raises MailboxLocked at once when
        another session, in any process, holds it."""
        root = self.ensure_user(user)
        fd = os.open(
            root / POP3_LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise MailboxLocked(f"maildrop already locked: {user}") from None
            yield
        finally:
            os.close(fd)

    # -- files beside the Maildir ------------------------------------------------

    def _roles(self, root: Path) -> dict[str, str]:
        roles: dict[str, str] = {}
        for line in _read_lines(root / SPECIAL_USE_FILE):
            role, _sep, encoded = line.partition(" ")
            with contextlib.suppress(ValueError, MailboxError):
                roles[names.folder_name(utf7.decode(encoded))] = role
        return roles

    def _set_role(self, root: Path, name: str, role: str | None) -> None:
        with self._locked(root / SPECIAL_USE_FILE):
            roles = self._roles(root)
            if role is None:
                roles.pop(name, None)
            else:
                roles[name] = role
            self._write_lines(
                root / SPECIAL_USE_FILE,
                [f"{r} {utf7.encode(n)}" for n, r in roles.items()],
            )

    def _subscriptions(self, root: Path) -> list[str]:
        found = []
        for line in _read_lines(root / SUBSCRIPTIONS_FILE):
            with contextlib.suppress(ValueError, MailboxError):
                found.append(names.folder_name(utf7.decode(line)))
        return found

    def _write_lines(self, path: Path, lines: list[str]) -> None:
        # Whole-file replace: readers never see half a file.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text("".join(f"{line}\n" for line in lines), encoding="ascii")
        os.replace(tmp, path)

    @contextlib.contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return []
    return [line for line in text.splitlines() if line.strip()]
