"""Local delivery: one file per message and mailbox, in a Maildir.

Theory of operation
-------------------

Who gets the message. With a ``LocalRecipients`` (the server always
has one), the recipient address is resolved (``mailbox.addressing``:
aliases, accounts, sub-addresses, postmaster, catch-all) to the
accounts whose INBOX gets a copy. An unknown address bounces 550 5.1.1:
RCPT already refused unknown addresses, so this only happens to an
account deleted while its mail was queued. Aliases to remote addresses
were expanded when the message was queued (``LocalRecipients.expand``),
so a forward found here (an alias changed since) is logged, not
followed. Without a ``LocalRecipients`` (tests, tools) every address is
its own mailbox, the sub-address after "+" removed.

Layout. An account's INBOX is ``<mailbox_dir>/<domain>/<local>/Maildir``
(``mailbox.names``: lower-case A-label domain, lower-case NFC local
part; an address literal such as ``[127.0.0.1]`` stays as it is;
``postmaster`` without a domain goes to our own host name), made on
first delivery with mode 0700. The IMAP folders and the index are made
by the first POP3/IMAP session, not here: delivery only adds files to
``new/``, and the index numbers them when a reader looks
(``mailbox.index``).

Safety. The directory name comes from a stranger, so it must never
leave ``mailbox_dir``: a local part is accepted only if, unquoted, it is
a dot-atom (RFC 5322 §3.2.3: no leading, trailing or doubled dot) of
printable characters without "/", at most 64 octets (RFC 5321
§4.5.3.1.1). A quoted local part counts by what it quotes: ``"alice"``
is alice, while anything a dot-atom cannot hold (space, "@",
backslash ...) is refused. A refusal is a permanent
553 5.1.3 (RFC 3463: bad destination mailbox address syntax).

Writing (the Maildir protocol, ``mailbox.maildir``). The message goes
to ``tmp/`` under a name unique to this host, process and moment,
opened with O_EXCL, is written, fsync'd, renamed into ``new/`` with
``,S=<size>`` appended, and ``new/`` is fsync'd so the rename survives a
crash. Only then is the recipient delivered. A file in ``tmp/`` is
never left behind by a failure.

Stored form. The file holds ``Return-Path`` (RFC 5321 §4.4; ``<>`` for
the null sender), ``Delivered-To`` (the recipient address as queued)
and then the content exactly as the spool has it, CRLF line endings
included. Most Maildir writers store LF endings; CRLF (Dovecot's
``mail_save_crlf``) keeps the body byte-identical and makes the file
size the RFC822.SIZE our POP3 and IMAP servers report.

Quotas. A mailbox whose account is over quota, or that this message
would take over it, defers 452 4.2.2; the queue retries until the
owner makes room or the message expires.

Failures. An ``OSError`` never escapes: a full disk defers 4.3.1, an
exhausted file-system quota 4.2.2, anything else 4.3.0 with the
system's error text (never a path: the reply may reach the sender in a
DSN). A database that cannot answer who the recipient is defers
4.3.0 too. All are temporary, so a fixed disk, permission or database
lets the retry succeed.

Threads. ``deliver`` blocks on the file system (and the database, to
resolve); the scheduler calls it through ``asyncio.to_thread``. It may
run on any number of threads at once.
"""

from __future__ import annotations

import errno
import logging
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from postroom.delivery.outcome import (
    BOUNCED,
    DEFERRED,
    DELIVERED,
    DeliveryError,
    Result,
)
from postroom.errors import BadMailboxName
from postroom.mailbox import maildir, names
from postroom.protocol.smtp import syntax
from postroom.protocol.smtp.replies import Reply
from postroom.queue.envelope import Envelope, Recipient

if TYPE_CHECKING:
    from postroom.mailbox.recipients import LocalRecipients

log = logging.getLogger(__name__)

DELIVERED_REPLY = Reply.of(250, "2.0.0", "delivered to maildir")
BAD_MAILBOX = Reply.of(553, "5.1.3", "bad destination mailbox address syntax")
UNKNOWN_USER = Reply.of(550, "5.1.1", "no such user here")
MAILBOX_FULL = Reply.of(452, "4.2.2", "mailbox full")
NO_STORAGE = Reply.of(452, "4.3.1", "insufficient system storage")
LOOKUP_FAILED = Reply.of(451, "4.3.0", "temporary user lookup failure")

# Without a LocalRecipients only "+" separates a sub-address.
SUBADDRESS_DELIMITER = "+"
DIR_MODE = maildir.DIR_MODE
FILE_MODE = maildir.FILE_MODE


class BadMailbox(DeliveryError):
    """The recipient's local part or domain cannot name a directory;
    ``reply`` is the permanent 553 5.1.3."""

    def __init__(self, address: str) -> None:
        super().__init__(BAD_MAILBOX)
        self.address = address


class LocalDelivery:
    """Delivers to Maildirs under *mailbox_dir*; see the module docstring.

    *hostname* ends the unique file names (and is the domain of a bare
    ``postmaster``). *recipients* resolves addresses to accounts and
    knows the quotas; without it every address is its own mailbox.
    *fsync* False skips the file and directory fsyncs, for tests and
    throw-away set-ups only: a crash may then lose mail that was
    reported delivered.
    """

    def __init__(
        self,
        mailbox_dir: Path,
        hostname: str,
        *,
        fsync: bool = True,
        recipients: LocalRecipients | None = None,
    ) -> None:
        self.mailbox_dir = Path(mailbox_dir)
        self.hostname = hostname
        self.fsync = fsync
        self.recipients = recipients

    def maildir_for(self, address: str) -> Path:
        """The Maildir for *address* (``local@domain`` as the envelope
        holds it) taken as its own mailbox, sub-address removed; nothing
        is created and no alias is looked at.

        Raises ``BadMailbox`` when the address does not parse or its
        local part is unsafe as a directory name.
        """
        parsed = _parse(address)
        try:
            local = names.local_name(parsed.unquoted_local)
            base, delimiter, _tag = local.partition(SUBADDRESS_DELIMITER)
            if delimiter and base:
                local = base
            domain = names.domain_name(parsed.ascii_domain or self.hostname)
            return names.user_maildir(self.mailbox_dir, f"{local}@{domain}")
        except BadMailboxName:
            raise BadMailbox(address) from None

    def deliver(
        self, envelope: Envelope, recipient: Recipient, content: bytes
    ) -> Result:
        """Store *content* in the INBOX of each account *recipient*
        resolves to.

        Returns a Result: delivered (250 2.0.0), bounced (553 5.1.3) for
        an unsafe mailbox name or (550 5.1.1) for an unknown address, or
        deferred (4.2.2 quota, 4.3.1, 4.3.0) when the file system fails.
        Never raises ``OSError``.
        """
        try:
            maildirs = self._maildirs(envelope, recipient.address)
        except BadMailbox as e:
            return Result(BOUNCED, e.reply)
        except sa.exc.SQLAlchemyError as e:
            log.error(
                "%s: user lookup failed to=<%s> error=%s",
                envelope.queue_id,
                recipient.address,
                e,
            )
            return Result(DEFERRED, LOOKUP_FAILED)
        if not maildirs:
            return Result(BOUNCED, UNKNOWN_USER)

        trace = _trace_header(envelope.sender, recipient.address)
        size = len(trace) + len(content)
        # XXX: with several mailboxes (an alias resolved here rather than
        # at queue time), a failure after the first copy defers the
        # recipient and the retry writes that copy again; expansion at
        # queue time makes this rare, and a duplicate beats a loss.
        for owner, path in maildirs:
            if (
                owner is not None
                and self.recipients is not None
                and self.recipients.over_quota(owner, size)
            ):
                # The engine logs the deferral with this reply.
                return Result(DEFERRED, MAILBOX_FULL)
            try:
                self._store(path, trace, content)
            except OSError as e:
                log.error(
                    "%s: maildir write failed to=<%s> maildir=%s error=%s",
                    envelope.queue_id,
                    recipient.address,
                    path,
                    e,
                )
                return Result(DEFERRED, _reply_for(e))
        return Result(DELIVERED, DELIVERED_REPLY)

    def _maildirs(
        self, envelope: Envelope, address: str
    ) -> list[tuple[str | None, Path]]:
        # (account or None, its INBOX) for every copy to write.
        parsed = _parse(address)
        if self.recipients is None:
            return [(None, self.maildir_for(address))]
        try:
            names.local_name(parsed.unquoted_local)
        except BadMailboxName:
            raise BadMailbox(address) from None
        resolution = self.recipients.resolver.resolve(
            f"{parsed.unquoted_local}@{parsed.domain}" if parsed.domain else address
        )
        if resolution is None:
            return []
        if resolution.forwards:
            # See the module docstring: forwards happen at queue time.
            log.warning(
                "%s: not forwarded to=<%s> forwards=%s reason=alias changed "
                "after queueing",
                envelope.queue_id,
                address,
                ",".join(resolution.forwards),
            )
        try:
            return [
                (owner, names.user_maildir(self.mailbox_dir, owner))
                for owner in resolution.mailboxes
            ]
        except BadMailboxName:
            raise BadMailbox(address) from None

    # -- the Maildir protocol ------------------------------------------

    def _store(self, path: Path, trace: bytes, content: bytes) -> None:
        self.mailbox_dir.mkdir(DIR_MODE, parents=True, exist_ok=True)
        # Domain and local part directories may be missing too.
        maildir.make_maildir(path, fsync=self.fsync, parents=2)
        tmp, base = maildir.write_tmp(
            path, (trace, content), fsync=self.fsync, host=self.hostname
        )
        maildir.publish(tmp, path / "new" / base, fsync=self.fsync)


def _parse(address: str) -> syntax.Address:
    try:
        parsed, rest = syntax.parse_path(f"<{address}>", null_ok=False, bad=BAD_MAILBOX)
    except syntax.SyntaxProblem:
        raise BadMailbox(address) from None
    if rest:
        raise BadMailbox(address)
    return parsed


def _trace_header(sender: str, address: str) -> bytes:
    # The envelope came through our parser, but a header must never
    # split whatever path it took: control characters go.
    sender = _printable(sender)
    address = _printable(address)
    return f"Return-Path: <{sender}>\r\nDelivered-To: {address}\r\n".encode()


def _printable(text: str) -> str:
    return "".join(c for c in text if _keeps(c))


def _keeps(char: str) -> bool:
    if char.isascii():
        return char >= " " and char != "\x7f"
    # C1 controls and U+2028/U+2029: readers that split a decoded header
    # with str.splitlines() break lines at NEL (U+0085) and at these
    # too, and an SMTPUTF8 sender may hold any of them.
    return unicodedata.category(char) not in ("Cc", "Zl", "Zp")


def _reply_for(error: OSError) -> Reply:
    if error.errno == errno.ENOSPC:
        return NO_STORAGE
    if error.errno == errno.EDQUOT:
        return MAILBOX_FULL
    # strerror, not str(error): the latter names our paths.
    text = error.strerror or type(error).__name__
    return Reply.of(451, "4.3.0", f"local delivery failed: {text}")
