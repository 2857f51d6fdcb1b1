"""The Maildir file protocol: names, flags, and atomic writes.

A message is one file. It is written in ``tmp/`` under a name unique
to this host, process and moment (``<seconds>.M<usec>P<pid>Q<n>.<host>``,
``n`` counting writes in this process under a lock, so threads never
share a name), opened with O_EXCL so a clash fails rather than
overwrites, fsync'd, then renamed into ``new/`` (delivery) or ``cur/``
(IMAP APPEND and COPY, which carry flags) with ``,S=<size>`` appended,
as Dovecot does, so readers and the quota need no stat. The directory
is fsync'd so the rename survives a crash.

Flags live in the name (the "info", after ``:2,``), as the Maildir
specification and every Maildir reader (mutt, Dovecot) expect: one
letter per flag, in ASCII order. ``D`` draft, ``F`` flagged, ``R``
replied (IMAP \\Answered), ``S`` seen, ``T`` trashed (IMAP \\Deleted);
``P`` (passed) has no IMAP flag and is kept untouched. Lower-case
letters ``a``..``z`` are keywords, numbered by the folder's keyword
table as Dovecot's ``dovecot-keywords`` numbers them.

The part before ``:`` (the "base") never changes in a file's life, so it
identifies the message across moves from new/ to cur/ and flag renames;
the index keys messages by it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

INFO_SEPARATOR = ":2,"
DIR_MODE = 0o700
FILE_MODE = 0o600
SUBDIRS = ("tmp", "new", "cur")

# IMAP system flags (RFC 3501 §2.3.2) and their Maildir letters.
SYSTEM_FLAGS = {
    "\\Draft": "D",
    "\\Flagged": "F",
    "\\Answered": "R",
    "\\Seen": "S",
    "\\Deleted": "T",
}
_FLAG_FOR_LETTER = {letter: flag for flag, letter in SYSTEM_FLAGS.items()}
_KEYWORD_LETTERS = "abcdefghijklmnopqrstuvwxyz"
MAX_KEYWORDS = len(_KEYWORD_LETTERS)

# Writes made by this process, for unique names; see unique_name.
_counter = itertools.count(1)
_counter_lock = threading.Lock()


# -- names ------------------------------------------------------------------


def split_name(filename: str) -> tuple[str, str | None]:
    """``base:2,FS`` -> ("base", "FS"); a name without info -> (name, None)."""
    base, sep, info = filename.partition(INFO_SEPARATOR)
    return base, (info if sep else None)


def size_from_name(base: str) -> int | None:
    """The ``,S=<size>`` of a base name, or None if it has none."""
    for field in base.split(",")[1:]:
        if field.startswith("S=") and field[2:].isascii() and field[2:].isdigit():
            return int(field[2:])
    return None


def flags_from_info(info: str | None, keywords: Mapping[int, str]) -> frozenset[str]:
    """IMAP flags for *info*; *keywords* maps keyword numbers to names."""
    if not info:
        return frozenset()
    # Nearly every message has only system flags ("S", "RS", ...): those
    # few spellings are cached, since a mailbox open reads one per file.
    cached = _SYSTEM_ONLY.get(info)
    if cached is not None:
        return cached
    flags = set()
    for letter in info:
        if letter in _FLAG_FOR_LETTER:
            flags.add(_FLAG_FOR_LETTER[letter])
        elif "a" <= letter <= "z":
            keyword = keywords.get(ord(letter) - ord("a"))
            if keyword is not None:
                flags.add(keyword)
    result = frozenset(flags)
    if len(_SYSTEM_ONLY) < 256 and all(c in _FLAG_FOR_LETTER for c in info):
        _SYSTEM_ONLY[info] = result
    return result


# info letters -> flags, for infos of system flags only (see above).
_SYSTEM_ONLY: dict[str, frozenset[str]] = {}


def info_for(
    flags: Iterable[str], old_info: str | None, numbers: Mapping[str, int]
) -> str:
    """The info letters for *flags*, keeping letters of *old_info* that
    IMAP cannot express (``P``, unknown upper-case letters, keywords not
    in *numbers*). *numbers* maps keyword names to their numbers; every
    keyword in *flags* must be in it."""
    letters = {c for c in old_info or "" if c not in _FLAG_FOR_LETTER}
    letters -= {_KEYWORD_LETTERS[n] for n in numbers.values()}
    for flag in flags:
        letter = SYSTEM_FLAGS.get(flag)
        if letter is None and not flag.startswith("\\"):
            letter = _KEYWORD_LETTERS[numbers[flag]]
        if letter is not None:
            letters.add(letter)
    return "".join(sorted(letters))


def unique_name(host: str | None = None) -> str:
    """A new base name: ``<sec>.M<usec>P<pid>Q<n>.<host>``.

    The second and microsecond make it unique over time, the pid among
    processes, the counter among writes (and threads) of this process
    within a microsecond.
    """
    with _counter_lock:
        n = next(_counter)
    seconds, usec = divmod(time.time_ns() // 1000, 1_000_000)
    return f"{seconds}.M{usec}P{os.getpid()}Q{n}.{name_safe_host(host)}"


def name_safe_host(host: str | None) -> str:
    # The Maildir convention: "/" and ":" cannot appear in the host part
    # of a name (":" starts the info), so they are written as octal.
    host = host if host is not None else socket.gethostname()
    return host.replace("/", r"\057").replace(":", r"\072") or "localhost"


# -- directories -------------------------------------------------------------


def is_maildir(path: Path) -> bool:
    return all((path / sub).is_dir() for sub in SUBDIRS)


def make_maildir(path: Path, *, fsync: bool = True, parents: int = 0) -> None:
    """Create Maildir *path* with tmp/new/cur, mode 0700, and *parents*
    levels above it that may be missing; each new entry is fsync'd in its
    parent. Existing directories are fine."""
    # Fast path: a Maildir that exists already.
    if (path / "new").is_dir() and (path / "tmp").is_dir() and (path / "cur").is_dir():
        return
    levels = [path.parents[i] for i in reversed(range(parents))]
    levels += [path] + [path / sub for sub in SUBDIRS]
    made: list[Path] = []
    for level in levels:
        try:
            # One level at a time: os.makedirs gives its mode only to
            # the last directory.
            os.mkdir(level, DIR_MODE)
        except FileExistsError:
            if not level.is_dir():
                raise
            continue
        made.append(level)
    if fsync:
        for parent in {level.parent for level in made}:
            fsync_dir(parent)


# -- writing -------------------------------------------------------------


def write_tmp(
    folder: Path,
    chunks: Iterable[bytes],
    *,
    fsync: bool = True,
    host: str | None = None,
) -> tuple[Path, str]:
    """Write *chunks* to a new file in ``folder/tmp``.

    Returns the file's path and the base name it should have once
    published (with ``,S=<size>``). The caller renames it with
    ``publish`` or removes it. Nothing is left behind on failure.
    *host* ends the unique name (default: this machine's name).
    """
    name, fd = _create_tmp(folder / "tmp", host)
    tmp = folder / "tmp" / name
    size = 0
    try:
        try:
            for chunk in chunks:
                _write_all(fd, chunk)
                size += len(chunk)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        unlink_quietly(tmp)
        raise
    return tmp, f"{name},S={size}"


def publish(tmp: Path, final: Path, *, fsync: bool = True) -> None:
    """Rename *tmp* to *final* and make the rename durable.

    On failure neither name is left: a reader must never see a message
    the writer is about to report as not stored.
    """
    try:
        os.rename(tmp, final)
        if fsync:
            fsync_dir(final.parent)
    except BaseException:
        # XXX: if the directory could not be fsync'd the unlink may fail
        # too and the file stay; the retry then stores a duplicate,
        # which is better than a loss.
        unlink_quietly(tmp)
        unlink_quietly(final)
        raise


def _create_tmp(tmp_dir: Path, host: str | None) -> tuple[str, int]:
    # O_EXCL turns a clash into an error instead of an overwrite; a
    # clash means a stale file from a crashed process whose pid came
    # back, so the next counter value is worth one more try.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    for attempt in range(3):
        name = unique_name(host)
        try:
            return name, os.open(tmp_dir / name, flags, FILE_MODE)
        except FileExistsError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
