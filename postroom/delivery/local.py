"""Local delivery: one file per message and recipient, in a Maildir.

Theory of operation
-------------------

Layout. Every recipient has a Maildir at
``<mailbox_dir>/<domain>/<local part>/Maildir`` with ``tmp``, ``new``
and ``cur`` inside, made on first delivery with mode 0700. ``domain``
is the recipient domain in lower-case A-labels (an address literal such
as ``[127.0.0.1]`` stays as it is; ``postmaster`` without a domain goes
to our own host name). The local part is compared without regard to
case and stored lower-case: RFC 5321 §2.4 lets a server treat local
parts as case-sensitive, but users take ``Alice`` and ``alice`` for the
same person, and one directory per person is the only safe reading of
that. Unicode local parts (SMTPUTF8) are stored as UTF-8 names after
NFC normalization, so that two spellings of the same text meet. A
sub-address, ``alice+tag``, goes to ``alice``.

XXX: that mapping (lower case, "+" as the one sub-address delimiter,
every address of a domain has a mailbox) stands in for real users and
aliases, which the mailbox work (#4) adds.

Safety. The directory name comes from a stranger, so it must never
leave ``mailbox_dir``: a local part is accepted only if, unquoted, it is
a dot-atom (RFC 5322 §3.2.3: no leading, trailing or doubled dot) of
printable characters without "/", at most 64 octets (RFC 5321
§4.5.3.1.1). A quoted local part counts by what it quotes: ``"alice"``
is alice, while anything a dot-atom cannot hold (space, "@",
backslash ...) is refused. A refusal is a permanent
553 5.1.3 (RFC 3463: bad destination mailbox address syntax).

Writing (the Maildir protocol). The message goes to ``tmp/`` under a
name unique to this host, process and moment
(``<seconds>.M<usec>P<pid>Q<n>.<host>``; ``n`` counts deliveries in
this process, under a lock, so threads never share a name), opened with
O_EXCL so that a clash fails rather than overwrites. It is written,
fsync'd, renamed into ``new/`` with ``,S=<size>`` appended (the file's
size, as Dovecot does, which saves readers a stat), and ``new/`` is
fsync'd so the rename survives a crash. Only then is the recipient
delivered. A file in ``tmp/`` is never left behind by a failure.

Stored form. The file holds ``Return-Path`` (RFC 5321 §4.4; ``<>`` for
the null sender), ``Delivered-To`` and then the content exactly as the
spool has it, CRLF line endings included. Most Maildir writers store LF
endings; CRLF (Dovecot's ``mail_save_crlf``) keeps the body
byte-identical and makes the file size the RFC822.SIZE our POP3 and
IMAP servers will report.

Failures. An ``OSError`` never escapes: a full disk defers 4.3.1, an
exhausted quota 4.2.2, anything else 4.3.0 with the system's error text
(never a path: the reply may reach the sender in a DSN). All are
temporary, so a fixed disk or permission lets the retry succeed.

Threads. ``deliver`` blocks on the file system; the scheduler calls it
through ``asyncio.to_thread``. It may run on any number of threads at
once; the only shared state is the process's name counter.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import re
import threading
import time
import unicodedata
from pathlib import Path

import idna

from postroom.delivery.outcome import (
    BOUNCED,
    DEFERRED,
    DELIVERED,
    DeliveryError,
    Result,
)
from postroom.protocol.smtp import syntax
from postroom.protocol.smtp.replies import Reply
from postroom.queue.envelope import Envelope, Recipient

log = logging.getLogger(__name__)

DELIVERED_REPLY = Reply.of(250, "2.0.0", "delivered to maildir")
BAD_MAILBOX = Reply.of(553, "5.1.3", "bad destination mailbox address syntax")
MAILBOX_FULL = Reply.of(452, "4.2.2", "mailbox full")
NO_STORAGE = Reply.of(452, "4.3.1", "insufficient system storage")

SUBADDRESS_DELIMITER = "+"
DIR_MODE = 0o700
FILE_MODE = 0o600

# Deliveries made by this process, for unique names; see _unique_name.
_counter = itertools.count(1)
_counter_lock = threading.Lock()

# RFC 5322 atext without "/", the one character a path cares about.
# Non-ASCII characters are vetted one by one in _mailbox_name.
_ATOM = r"[A-Za-z0-9!#$%&'*+=?^_`{|}~\-\u0080-\U0010ffff]+"
_SAFE_LOCAL = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")


class BadMailbox(DeliveryError):
    """The recipient's local part or domain cannot name a directory;
    ``reply`` is the permanent 553 5.1.3."""

    def __init__(self, address: str) -> None:
        super().__init__(BAD_MAILBOX)
        self.address = address


class LocalDelivery:
    """Delivers to Maildirs under *mailbox_dir*; see the module docstring.

    *hostname* ends the unique file names (and is the domain of a bare
    ``postmaster``). *fsync* False skips the file and directory fsyncs,
    for tests and throw-away set-ups only: a crash may then lose mail
    that was reported delivered.
    """

    def __init__(self, mailbox_dir: Path, hostname: str, *, fsync: bool = True) -> None:
        self.mailbox_dir = Path(mailbox_dir)
        self.hostname = hostname
        self.fsync = fsync
        self._host_part = _name_safe_host(hostname)

    def maildir_for(self, address: str) -> Path:
        """The Maildir for *address* (``local@domain`` as the envelope
        holds it); nothing is created.

        Raises ``BadMailbox`` when the address does not parse or its
        local part is unsafe as a directory name.
        """
        try:
            parsed, rest = syntax.parse_path(
                f"<{address}>", null_ok=False, bad=BAD_MAILBOX
            )
        except syntax.SyntaxProblem:
            raise BadMailbox(address) from None
        if rest:
            raise BadMailbox(address)

        local = _mailbox_name(parsed.unquoted_local, address)
        domain = parsed.ascii_domain.lower() or _ascii_host(self.hostname)
        _check_component(domain, address)
        path = self.mailbox_dir / domain / local / "Maildir"

        # Belt and braces: the checks above already make this true.
        root = os.path.normpath(self.mailbox_dir)
        if not os.path.normpath(path).startswith(root + os.sep):
            raise BadMailbox(address)
        return path

    def deliver(
        self, envelope: Envelope, recipient: Recipient, content: bytes
    ) -> Result:
        """Store *content* in the Maildir of *recipient*.

        Returns a Result: delivered (250 2.0.0), bounced (553 5.1.3) for
        an unsafe mailbox name, or deferred (4.2.2, 4.3.1, 4.3.0) when
        the file system fails. Never raises ``OSError``.
        """
        try:
            maildir = self.maildir_for(recipient.address)
        except BadMailbox as e:
            return Result(BOUNCED, e.reply)

        trace = _trace_header(envelope.sender, recipient.address)
        try:
            self._store(maildir, trace, content)
        except OSError as e:
            log.error(
                "%s: maildir write failed to=<%s> maildir=%s error=%s",
                envelope.queue_id,
                recipient.address,
                maildir,
                e,
            )
            return Result(DEFERRED, _reply_for(e))
        return Result(DELIVERED, DELIVERED_REPLY)

    # -- the Maildir protocol ------------------------------------------

    def _store(self, maildir: Path, trace: bytes, content: bytes) -> None:
        self._make_maildir(maildir)
        name, fd = self._create_tmp(maildir / "tmp")
        tmp = maildir / "tmp" / name
        final: Path | None = None
        try:
            try:
                _write_all(fd, trace)
                _write_all(fd, content)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            final = maildir / "new" / f"{name},S={len(trace) + len(content)}"
            os.rename(tmp, final)
            if self.fsync:
                _fsync_dir(maildir / "new")
        except BaseException:
            # Whichever name the file has now, it must go: a reader
            # would see a message we are about to report undelivered.
            # XXX: if new/ could not be fsync'd the file may stay after
            # all (the unlink fails too), and the retry then delivers a
            # duplicate; a duplicate is better than a loss.
            for path in (tmp, final):
                if path is not None:
                    _unlink_quietly(path)
            raise

    def _create_tmp(self, tmp_dir: Path) -> tuple[str, int]:
        # O_EXCL turns a clash into an error instead of an overwrite; a
        # clash means a stale file from a crashed process whose pid came
        # back, so the next counter value is worth one more try.
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        for attempt in range(3):
            name = self._unique_name()
            try:
                return name, os.open(tmp_dir / name, flags, FILE_MODE)
            except FileExistsError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _make_maildir(self, maildir: Path) -> None:
        # Fast path: a Maildir that has received mail before.
        if (maildir / "new").is_dir() and (maildir / "tmp").is_dir():
            return

        # One level at a time, because os.makedirs gives its mode only to
        # the last directory; each new entry is fsync'd in its parent.
        self.mailbox_dir.mkdir(DIR_MODE, parents=True, exist_ok=True)
        made: list[Path] = []
        levels = [maildir.parent.parent]
        levels += [maildir.parent, maildir]
        levels += [maildir / sub for sub in ("tmp", "new", "cur")]
        for path in levels:
            try:
                os.mkdir(path, DIR_MODE)
            except FileExistsError:
                if not path.is_dir():
                    raise
                continue
            made.append(path)
        if self.fsync:
            for parent in {path.parent for path in made}:
                _fsync_dir(parent)

    def _unique_name(self) -> str:
        # Maildir's recipe: the second and microsecond make the name
        # unique over time, the pid among processes, the counter among
        # deliveries (and threads, and instances) of this process within
        # a microsecond.
        with _counter_lock:
            n = next(_counter)
        now = time.time_ns() // 1000
        seconds, usec = divmod(now, 1_000_000)
        return f"{seconds}.M{usec}P{os.getpid()}Q{n}.{self._host_part}"


# -- names --------------------------------------------------------------


def _mailbox_name(local: str, address: str) -> str:
    """The directory name for an unquoted local part, or BadMailbox."""
    if len(local.encode("utf-8", "surrogatepass")) > syntax.MAX_LOCAL_PART:
        raise BadMailbox(address)
    if _SAFE_LOCAL.fullmatch(local) is None:
        raise BadMailbox(address)
    for char in local:
        # Controls, formatting marks (bidi overrides, zero-width), line
        # and paragraph separators, unassigned and private code points:
        # none belongs in a name a human reads in a shell.
        if not char.isascii() and unicodedata.category(char)[0] in "CZ":
            raise BadMailbox(address)

    # Normalize after lowering, which may leave text outside NFC.
    name = unicodedata.normalize("NFC", local.lower())
    base, delimiter, _tag = name.partition(SUBADDRESS_DELIMITER)
    if delimiter and base:
        name = base
    _check_component(name, address)
    return name


def _check_component(name: str, address: str) -> None:
    # The last line of defence for whatever becomes one path component.
    if (
        not name
        or name.startswith(".")
        or "/" in name
        or "\0" in name
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name)
    ):
        raise BadMailbox(address)


def _ascii_host(hostname: str) -> str:
    try:
        return idna.encode(hostname, uts46=True).decode("ascii").lower()
    except idna.IDNAError:
        return hostname.lower()


def _name_safe_host(hostname: str) -> str:
    # The Maildir convention: "/" and ":" cannot appear in the host part
    # of a name (":" starts the flags), so they are written as octal.
    return hostname.replace("/", r"\057").replace(":", r"\072") or "localhost"


def _trace_header(sender: str, address: str) -> bytes:
    # The envelope came through our parser, but a header must never
    # split whatever path it took: control characters go.
    sender = _printable(sender)
    address = _printable(address)
    return f"Return-Path: <{sender}>\r\nDelivered-To: {address}\r\n".encode()


def _printable(text: str) -> str:
    return "".join(c for c in text if c >= " " and c != "\x7f")


# -- I/O helpers ----------------------------------------------------------


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _reply_for(error: OSError) -> Reply:
    if error.errno == errno.ENOSPC:
        return NO_STORAGE
    if error.errno == errno.EDQUOT:
        return MAILBOX_FULL
    # strerror, not str(error): the latter names our paths.
    text = error.strerror or type(error).__name__
    return Reply.of(451, "4.3.0", f"local delivery failed: {text}")
