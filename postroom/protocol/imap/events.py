"""What the IMAP core and its driver say to each other.

Events (the core to the driver) are commands that need storage or
policy. All but ``IdleDone`` and ``Closed`` are *answer required*: the
core returns ``PAUSED`` from ``next_event`` until the driver calls
``ImapConnection.respond`` with one of the answers listed on the event.
Every event also takes ``Refused`` (tagged NO, or BAD with ``bad``). The
core renders every answer itself, untagged data included: the driver
hands over data, never bytes.

The driver addresses messages by UID only. The core keeps the session's
view of the selected mailbox (the UID of each sequence number), turns
sequence sets into UIDs before an event leaves it, and turns UIDs back
into sequence numbers in what it sends. Changes made by others reach the
view through ``ImapConnection.update`` (``MailboxUpdate``), and the core
reports them when RFC 3501 §7.4.1 allows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from postroom.protocol.imap.fetchitems import Request
from postroom.protocol.imap.searchkeys import Key

StoreMode = Literal["set", "add", "remove"]
SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_DATA = _Sentinel("NEED_DATA")
"""No complete command is buffered: call ``receive_data``."""

PAUSED = _Sentinel("PAUSED")
"""An answer-required event is outstanding: call ``respond``."""


# ----------------------------------------------------------------------
# Data the driver hands to the core


@dataclass(slots=True)
class MessageData:
    """One message as FETCH, STORE and SEARCH need it.

    ``flags`` as the session sees them, \\Recent included where it
    applies (SEARCH RECENT, NEW and OLD test it).
    ``content`` is the stored message (CRLF line ends) or a callable that
    loads it; it may be None when the event says ``needs_content`` is
    false. ``size`` defaults to ``len(content)``.
    """

    uid: int
    flags: Sequence[str] = ()
    internaldate: dt.datetime | None = None
    size: int | None = None
    content: bytes | Callable[[], bytes] | None = None

    def load(self) -> bytes:
        """The content, loaded (once) if it was given as a callable."""
        content = self.content
        if content is None:
            raise ValueError(f"message uid {self.uid}: content not supplied")
        if not isinstance(content, bytes):
            content = self.content = content()
        return content

    def octets(self) -> int:
        return self.size if self.size is not None else len(self.load())


@dataclass(slots=True)
class MailboxSnapshot:
    """The answer to ``Select``: the mailbox as the session starts to see
    it. ``uids`` ascending; ``first_unseen`` is a sequence number."""

    uids: list[int]
    uidvalidity: int
    uidnext: int
    flags: Sequence[str] = SYSTEM_FLAGS
    permanent_flags: Sequence[str] | None = None  # None: flags and \*
    recent: int = 0
    first_unseen: int | None = None
    read_only: bool = False


@dataclass(slots=True)
class MailboxUpdate:
    """What changed in the selected mailbox since the core last heard:
    UIDs added (ascending, above every UID in the view), UIDs expunged,
    and new flags of messages."""

    added: Sequence[int] = ()
    expunged: Sequence[int] = ()
    flags: Mapping[int, Sequence[str]] = field(default_factory=dict)
    recent: int | None = None


@dataclass(slots=True)
class MailboxInfo:
    """One mailbox in the answer to ``List``. ``exists`` false: known only
    as a subscription (\\NonExistent). ``special_use``: "\\Sent" etc."""

    name: str
    subscribed: bool = False
    exists: bool = True
    selectable: bool = True
    special_use: str | None = None


@dataclass(slots=True)
class AppendMessage:
    content: bytes
    flags: tuple[str, ...] = ()
    internaldate: dt.datetime | None = None


# ----------------------------------------------------------------------
# Answers


@dataclass(frozen=True, slots=True)
class Done:
    """Tagged OK; ``code`` is a response code without brackets."""

    text: str = ""
    code: str | None = None


@dataclass(frozen=True, slots=True)
class Refused:
    """Tagged NO (BAD with ``bad``): nothing happened. Typical codes:
    TRYCREATE, NONEXISTENT, ALREADYEXISTS, CANNOT, AUTHENTICATIONFAILED,
    UNAVAILABLE, OVERQUOTA, LIMIT."""

    text: str
    code: str | None = None
    bad: bool = False


@dataclass(slots=True)
class Listing:
    mailboxes: Sequence[MailboxInfo]


@dataclass(slots=True)
class StatusData:
    """Values for STATUS items, by upper-case name (MESSAGES, RECENT,
    UIDNEXT, UIDVALIDITY, UNSEEN, SIZE); asked items must be present."""

    values: Mapping[str, int]


@dataclass(slots=True)
class Appended:
    """APPEND stored: UIDs in order, for APPENDUID (RFC 4315)."""

    uidvalidity: int
    uids: Sequence[int]


@dataclass(slots=True)
class Messages:
    """Messages for FETCH/STORE (those asked for; missing ones were
    expunged meanwhile) or the candidates for SEARCH (usually all)."""

    messages: Sequence[MessageData]


@dataclass(slots=True)
class Expunged:
    uids: Sequence[int]


@dataclass(slots=True)
class Copied:
    """COPY/MOVE done: source and new UIDs pairwise, for COPYUID."""

    uidvalidity: int
    source_uids: Sequence[int]
    dest_uids: Sequence[int]


Answer = (
    Done
    | Refused
    | MailboxSnapshot
    | Listing
    | StatusData
    | Appended
    | Messages
    | Expunged
    | Copied
)


# ----------------------------------------------------------------------
# Events


@dataclass(slots=True)
class Login:
    """LOGIN or AUTHENTICATE: check the password. Done or Refused (use
    code AUTHENTICATIONFAILED; slowing failures down is the driver's)."""

    username: str
    password: str = field(repr=False)
    mechanism: str = "LOGIN"  # or the SASL mechanism
    authzid: str = ""


@dataclass(slots=True)
class StartTls:
    """Done: the core sends OK, drops buffered input; the driver starts
    TLS and calls ``tls_started()``."""


@dataclass(slots=True)
class Select:
    """SELECT (EXAMINE: ``read_only``). MailboxSnapshot or Refused. Any
    mailbox selected before is already left, without expunging; a
    refusal leaves none selected (RFC 3501 §6.3.1)."""

    mailbox: str
    read_only: bool


@dataclass(slots=True)
class Create:
    mailbox: str


@dataclass(slots=True)
class Delete:
    mailbox: str


@dataclass(slots=True)
class Rename:
    mailbox: str
    new_name: str


@dataclass(slots=True)
class Subscribe:
    mailbox: str


@dataclass(slots=True)
class Unsubscribe:
    mailbox: str


@dataclass(slots=True)
class List:
    """LIST or LSUB. Answer Listing with the user's mailboxes (all of
    them, or any superset of the matches): the core matches patterns,
    applies selection options and adds \\HasChildren/\\HasNoChildren."""

    reference: str
    patterns: tuple[str, ...]
    lsub: bool = False
    subscribed_only: bool = False  # selection option SUBSCRIBED
    special_use_only: bool = False  # selection option SPECIAL-USE


@dataclass(slots=True)
class Status:
    """STATUS; answer StatusData with every item in ``items``."""

    mailbox: str
    items: tuple[str, ...]


@dataclass(slots=True)
class Append:
    """APPEND (MULTIAPPEND: several messages, all or none). Appended,
    Done (no APPENDUID) or Refused (TRYCREATE if the mailbox is absent)."""

    mailbox: str
    messages: tuple[AppendMessage, ...]


@dataclass(slots=True)
class Poll:
    """NOOP or CHECK with a mailbox selected: call ``update`` with any
    news, then Done."""

    command: str


@dataclass(slots=True)
class Close:
    """CLOSE (``expunge``: remove \\Deleted messages silently) or
    UNSELECT (RFC 3691). Done."""

    expunge: bool


@dataclass(slots=True)
class Expunge:
    """EXPUNGE; UID EXPUNGE limits it to ``uids``. Expunged."""

    uids: tuple[int, ...] | None


@dataclass(slots=True)
class Search:
    """SEARCH. Messages with the candidates; the core matches ``key``.
    Content is needed only for ``needs_content`` (or give callables)."""

    key: Key
    uid: bool
    needs_content: bool
    charset: str = "US-ASCII"


@dataclass(slots=True)
class Fetch:
    """FETCH: Messages for ``uids``. With ``request.sets_seen`` in a
    read-write mailbox the driver adds \\Seen first and answers with the
    new flags; the core then reports them."""

    uids: tuple[int, ...]
    request: Request
    uid: bool
    read_only: bool = False


@dataclass(slots=True)
class Store:
    """STORE: apply ``flags`` (``mode`` "set", "add" or "remove") to
    ``uids``; answer Messages with the resulting flags."""

    uids: tuple[int, ...]
    mode: StoreMode
    flags: tuple[str, ...]
    silent: bool
    uid: bool


@dataclass(slots=True)
class Copy:
    """COPY or MOVE (``move``: the sources are expunged). Copied (always
    for MOVE), Done (COPY without COPYUID) or Refused (TRYCREATE)."""

    uids: tuple[int, ...]
    mailbox: str
    move: bool
    uid: bool


@dataclass(slots=True)
class Idle:
    """IDLE: Done starts it (the core sends "+ idling"); call ``update``
    as changes happen. The client's DONE ends it with ``IdleDone``."""


@dataclass(slots=True)
class IdleDone:
    """The client ended IDLE; the core answered. No answer needed."""


@dataclass(slots=True)
class Closed:
    """The conversation is over (LOGOUT, BYE, or the peer hung up). Send
    what is left in the output, then close. No answer needed."""

    by_peer: bool


Event = (
    Login
    | StartTls
    | Select
    | Create
    | Delete
    | Rename
    | Subscribe
    | Unsubscribe
    | List
    | Status
    | Append
    | Poll
    | Close
    | Expunge
    | Search
    | Fetch
    | Store
    | Copy
    | Idle
    | IdleDone
    | Closed
)
