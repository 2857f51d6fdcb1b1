"""Arguments of each IMAP command, read into the events of ``events``.

One function per command (the verb in its name), each given a cursor
just past the command name and space, and returning the event or
raising ``ParseError``. They check syntax and the cheap rules that need
no storage: mailbox names that could not be a name in any store
(``check_mailbox``), status items, flags a client may not set. The
state rules are the connection's; the storage's rules are the driver's.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from postroom.protocol.imap import events, utf7
from postroom.protocol.imap.fetchitems import parse_fetch_items
from postroom.protocol.imap.listing import ListOptions
from postroom.protocol.imap.search import needs_content
from postroom.protocol.imap.searchkeys import parse_search
from postroom.protocol.imap.syntax import ATOM_CHARS, Cursor, ParseError
from postroom.protocol.imap.view import MailboxView

STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN")


@dataclass(slots=True)
class Context:
    """What argument parsing needs to know about the session."""

    delimiter: str
    utf8: bool  # UTF8=ACCEPT enabled (RFC 6855)
    view: MailboxView | None


# ----------------------------------------------------------------------
# Shared pieces


def mailbox(cur: Cursor, ctx: Context) -> str:
    """A mailbox argument, decoded and checked; INBOX in any case is
    INBOX (RFC 3501 §5.1)."""
    return decode_mailbox(cur.astring(), ctx)


def decode_mailbox(raw: bytes, ctx: Context) -> str:
    try:
        name = raw.decode("utf-8") if ctx.utf8 else utf7.decode(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ParseError("Mailbox name is not valid modified UTF-7") from None
    if name.upper() == "INBOX":
        return "INBOX"
    problem = check_mailbox(name, ctx.delimiter)
    if problem:
        raise ParseError(problem, code="CANNOT", status="NO")
    return name


def check_mailbox(name: str, delimiter: str) -> str | None:
    """Why *name* cannot be a mailbox, or None. Refuses what could
    escape or confuse a file-system store: empty names and components,
    "." and "..", control characters, and names that are not in Unicode
    normal form C (two spellings of one name)."""
    if not name:
        return "Empty mailbox name"
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs") for c in name):
        return "Control characters in mailbox name"
    if unicodedata.normalize("NFC", name) != name:
        # XXX: a client that sends decomposed names (NFD) is refused
        # rather than normalized, because silently renaming would make
        # LIST show a name other than the one created; none seen so far.
        return "Mailbox name is not in normal form C"
    if len(name) > 512:
        return "Mailbox name too long"
    for component in name.split(delimiter):
        if component in ("", ".", ".."):
            return "Invalid mailbox name"
    return None


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError("String is not UTF-8") from None


def _uids(cur: Cursor, ctx: Context, uid: bool) -> tuple[int, ...]:
    assert ctx.view is not None
    return tuple(ctx.view.resolve(cur.sequence_set(), uid=uid))


# ----------------------------------------------------------------------
# Commands


def login(cur: Cursor, ctx: Context) -> events.Login:
    user = _text(cur.astring())
    cur.sp()
    password = _text(cur.astring())
    cur.end()
    return events.Login(user, password)


def select(cur: Cursor, ctx: Context, read_only: bool) -> events.Select:
    name = mailbox(cur, ctx)
    cur.end()
    return events.Select(name, read_only)


def create(cur: Cursor, ctx: Context) -> events.Create:
    # RFC 3501 §6.3.3: "CREATE foo/" creates foo, declaring that it
    # will hold children; the trailing delimiter is not part of the name.
    raw = cur.astring()
    if len(raw) > 1 and raw.endswith(ctx.delimiter.encode()):
        raw = raw[:-1]
    name = decode_mailbox(raw, ctx)
    cur.end()
    return events.Create(name)


def one_mailbox(cur: Cursor, ctx: Context) -> str:
    name = mailbox(cur, ctx)
    cur.end()
    return name


def rename(cur: Cursor, ctx: Context) -> events.Rename:
    old = mailbox(cur, ctx)
    cur.sp()
    new = mailbox(cur, ctx)
    cur.end()
    return events.Rename(old, new)


def list_(cur: Cursor, ctx: Context) -> tuple[events.List, ListOptions]:
    """LIST, with the RFC 5258 selection and return options."""
    subscribed = special = recursive = False
    if cur.maybe(b"("):
        for word in _atom_list(cur):
            if word == "SUBSCRIBED":
                subscribed = True
            elif word == "SPECIAL-USE":
                special = True
            elif word == "RECURSIVEMATCH":
                recursive = True
            elif word != "REMOTE":
                raise ParseError(f"Unknown LIST selection option {word[:20]}")
        cur.sp()
    if recursive and not subscribed:
        raise ParseError("RECURSIVEMATCH needs another selection option")
    reference = _pattern(cur, ctx)
    cur.sp()
    if cur.maybe(b"("):
        patterns = [_pattern(cur, ctx)]
        while not cur.maybe(b")"):
            cur.sp()
            patterns.append(_pattern(cur, ctx))
    else:
        patterns = [_pattern(cur, ctx)]
    ret_sub = ret_children = ret_special = False
    if not cur.at_end():
        cur.sp()
        if cur.run(ATOM_CHARS).upper() != b"RETURN":
            raise ParseError("Expected RETURN")
        cur.sp()
        cur.expect(b"(")
        for word in _atom_list(cur):
            if word == "SUBSCRIBED":
                ret_sub = True
            elif word == "CHILDREN":
                ret_children = True
            elif word == "SPECIAL-USE":
                ret_special = True
            else:
                raise ParseError(f"Unknown LIST return option {word[:20]}")
    cur.end()
    event = events.List(reference, tuple(patterns), False, subscribed, special)
    return event, ListOptions(recursive, ret_sub, ret_children, ret_special)


def lsub(cur: Cursor, ctx: Context) -> events.List:
    reference = _pattern(cur, ctx)
    cur.sp()
    pattern = _pattern(cur, ctx)
    cur.end()
    return events.List(reference, (pattern,), lsub=True)


def _pattern(cur: Cursor, ctx: Context) -> str:
    raw = cur.list_mailbox()
    try:
        return raw.decode("utf-8") if ctx.utf8 else utf7.decode(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ParseError("Mailbox pattern is not valid modified UTF-7") from None


def _atom_list(cur: Cursor) -> list[str]:
    """The rest of "(" atom *(SP atom) ")", upper-cased; may be empty."""
    words: list[str] = []
    while not cur.maybe(b")"):
        if words:
            cur.sp()
        words.append(cur.atom().decode("ascii").upper())
    return words


def status(cur: Cursor, ctx: Context) -> events.Status:
    name = mailbox(cur, ctx)
    cur.sp()
    cur.expect(b"(")
    items = _atom_list(cur)
    cur.end()
    if not items or any(i not in STATUS_ITEMS for i in items):
        raise ParseError("Bad STATUS item list")
    return events.Status(name, tuple(dict.fromkeys(items)))


def append(cur: Cursor, ctx: Context) -> events.Append:
    """APPEND mailbox [flags] [date-time] literal, repeated for
    MULTIAPPEND (RFC 3502); "UTF8 (literal8)" after UTF8=ACCEPT."""
    name = mailbox(cur, ctx)
    messages: list[events.AppendMessage] = []
    while not cur.at_end() or not messages:
        cur.sp()
        flags: tuple[str, ...] = ()
        when = None
        if cur.peek() == ord("("):
            flags = _client_flags(cur.flag_list())
            cur.sp()
        if cur.peek() == ord('"'):
            when = cur.date_time()
            cur.sp()
        if cur.peek() in (ord("U"), ord("u")) and ctx.utf8:
            if cur.run(ATOM_CHARS).upper() != b"UTF8":
                raise ParseError("Expected a literal")
            cur.sp()
            cur.expect(b"(")
            content = cur.literal().data
            cur.expect(b")")
        else:
            lit = cur.literal()
            content = lit.data
        messages.append(events.AppendMessage(content, flags, when))
    return events.Append(name, tuple(messages))


def _client_flags(flags: tuple[str, ...]) -> tuple[str, ...]:
    if "\\Recent" in flags:
        raise ParseError("\\Recent cannot be set by a client")
    return tuple(dict.fromkeys(flags))


def search(cur: Cursor, ctx: Context, uid: bool) -> events.Search:
    charset, key = parse_search(cur)
    return events.Search(key, uid, needs_content(key), charset)


def fetch(cur: Cursor, ctx: Context, uid: bool) -> events.Fetch:
    uids = _uids(cur, ctx, uid)
    cur.sp()
    request = parse_fetch_items(cur)
    cur.end()
    assert ctx.view is not None
    return events.Fetch(uids, request, uid, ctx.view.read_only)


def store(cur: Cursor, ctx: Context, uid: bool) -> events.Store:
    uids = _uids(cur, ctx, uid)
    cur.sp()
    word = cur.run(ATOM_CHARS).decode("ascii").upper()
    mode: events.StoreMode = (
        "add" if word[:1] == "+" else "remove" if word[:1] == "-" else "set"
    )
    base = word.lstrip("+-")
    silent = base.endswith(".SILENT")
    if base.removesuffix(".SILENT") != "FLAGS" or len(word) - len(base) > 1:
        raise ParseError("Expected FLAGS, +FLAGS or -FLAGS")
    cur.sp()
    if cur.peek() == ord("("):
        flags = cur.flag_list()
    else:
        flags_list = [cur.flag()]
        while not cur.at_end():
            cur.sp()
            flags_list.append(cur.flag())
        flags = tuple(flags_list)
    cur.end()
    return events.Store(uids, mode, _client_flags(flags), silent, uid)


def copy(cur: Cursor, ctx: Context, uid: bool, move: bool) -> events.Copy:
    uids = _uids(cur, ctx, uid)
    cur.sp()
    name = mailbox(cur, ctx)
    cur.end()
    return events.Copy(uids, name, move, uid)


def uid_expunge(cur: Cursor, ctx: Context) -> events.Expunge:
    uids = _uids(cur, ctx, True)
    cur.end()
    return events.Expunge(uids)


def enable(cur: Cursor) -> list[str]:
    words = [cur.atom().decode("ascii").upper()]
    while not cur.at_end():
        cur.sp()
        words.append(cur.atom().decode("ascii").upper())
    return words


def id_params(cur: Cursor) -> dict[str, str | None]:
    """ID (RFC 2971): NIL or a list of field/value pairs."""
    if cur.text[cur.pos : cur.pos + 3].upper() == b"NIL":
        cur.pos += 3
        cur.end()
        return {}
    cur.expect(b"(")
    params: dict[str, str | None] = {}
    while not cur.maybe(b")"):
        if params:
            cur.sp()
        key = cur.string().decode("utf-8", "replace")
        cur.sp()
        value = cur.nstring()
        params[key[:30]] = None if value is None else value.decode("utf-8", "replace")
        if len(params) > 30:
            raise ParseError("Too many ID fields")
    cur.end()
    return params
