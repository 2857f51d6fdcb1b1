"""Postroom's exception tree.

Every error we raise on purpose derives from ``PostroomError``::

    PostroomError
    ├── ConfigError          a setting is missing, malformed or out of range
    ├── SpoolError           the spool could not make a message durable
    │   └── SpoolCorrupt     a journal record failed its checksum on read
    ├── QueueError           a queue operation named something that is not there
    │   └── NotFound         no message with that queue id
    ├── UserError            an account operation named a bad or unknown address
    │   ├── UserExists       adding an address that already has an account
    │   └── UnknownUser      no account with that address
    ├── MailboxError         a mailbox operation could not be carried out
    │   ├── BadMailboxName   a user or folder name that could escape the
    │   │                    user's directory, or is malformed
    │   ├── NoSuchMailbox    the folder does not exist
    │   ├── MailboxExists    creating (or renaming onto) an existing folder
    │   ├── MailboxLocked    a POP3 session already holds the mailbox
    │   ├── UidValidityChanged  the folder's index was rebuilt under an
    │   │                    open session: its UIDs no longer hold
    │   └── QuotaExceeded    the message would take the user over quota
    ├── TemplateError        a stored template could not be compiled or
    │   │                    rendered (syntax, unsafe access, bad data)
    │   └── UnknownTemplate  no template, or no such version of it
    ├── ContactError         a contact, list, field or segment operation
    │   │                    was refused (bad address, bad value, bad file)
    │   └── UnknownContact   no contact, list or segment with that id
    ├── AuthError            a credential check could not be carried out (a
    │                        broken hash, the database down): a temporary
    │                        failure, unlike a wrong password, which is a
    │                        plain False from ``Authenticator.verify``
    └── ProtocolError        a peer broke the protocol (raised by cores only
        │                    when the caller misuses them; peers' mistakes
        │                    become replies, never exceptions)
        └── LocalProtocolError   *our* side misused a protocol core

The split between "remote" and "local" faults follows h11: a peer's bad
input is answered on the wire and never raises out of a core; a
``LocalProtocolError`` means a bug in the driver (for example answering an
event twice) and should crash loudly in tests.
"""

from __future__ import annotations


class PostroomError(Exception):
    """Base of every error Postroom raises deliberately."""


class ConfigError(PostroomError):
    """A configuration value is invalid. ``str()`` is one line for the user."""


class SpoolError(PostroomError):
    """The spool could not store or read a message."""


class SpoolCorrupt(SpoolError):
    """A stored record does not match its checksum."""


class QueueError(PostroomError):
    """A queue operation could not be carried out."""


class NotFound(QueueError):
    """No queued message has the given id."""


class UserError(PostroomError):
    """An account operation failed. ``str()`` is one line for the user."""


class UserExists(UserError):
    """An account with that address already exists."""


class UnknownUser(UserError):
    """No account has the given address."""


class MailboxError(PostroomError):
    """A mailbox operation failed. ``str()`` is one line, safe to show
    to the mailbox's owner (it names folders, never paths)."""


class BadMailboxName(MailboxError):
    """A user or folder name is malformed or could leave the user's
    directory (``..``, ``/``, NUL, control characters ...)."""


class NoSuchMailbox(MailboxError):
    """The folder does not exist."""


class MailboxExists(MailboxError):
    """The folder already exists."""


class MailboxLocked(MailboxError):
    """Another session holds the mailbox's POP3 lock (RFC 1939 §8)."""


class UidValidityChanged(MailboxError):
    """The folder's index was lost and rebuilt while a session had it
    open; the session must reopen it (IMAP: BYE, or SELECT again)."""


class QuotaExceeded(MailboxError):
    """Storing the message would take its owner over quota."""


class TemplateError(PostroomError):
    """A template could not be compiled or rendered. ``str()`` is one
    line naming the template, the part and the line where known."""


class UnknownTemplate(TemplateError):
    """No template (or template version) has the given id."""


class ContactError(PostroomError):
    """A contact, list, custom field or segment could not be stored or
    read as asked. ``str()`` is one line; ``field`` names the offending
    field where there is one (the API's field path)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class UnknownContact(ContactError):
    """No contact, list or segment has the given id or address."""


class AuthError(PostroomError):
    """Credentials could not be checked at all (not: they were wrong).

    SMTP AUTH answers this with 454 4.7.0 (temporary, RFC 4954 §6) rather
    than 535, so a client retries instead of prompting for a new password.
    """


class ProtocolError(PostroomError):
    """Base for protocol misuse."""


class LocalProtocolError(ProtocolError):
    """The driver of a protocol core called it out of turn."""
