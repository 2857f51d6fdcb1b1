"""One function per IMAP command: its state rule, its cheap checks, and
the event it hands to the driver (or the answer it gives itself).

``COMMANDS`` maps each verb to the states it is valid in, its function,
and whether it takes arguments; ``ImapConnection._dispatch`` reads the
tag and verb, applies the state rule and calls the function with a
cursor just past the verb. A function returns the event for the driver,
or None when it answered the command itself (CAPABILITY, NAMESPACE,
ENABLE, ID, a refusal); ``ParseError`` becomes a tagged BAD or NO.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from postroom.protocol import sasl
from postroom.protocol.imap import commands, events, responses
from postroom.protocol.imap.events import Event
from postroom.protocol.imap.listing import ListOptions
from postroom.protocol.imap.states import Mode, State
from postroom.protocol.imap.syntax import ATOM_CHARS, Cursor

if TYPE_CHECKING:
    from postroom.protocol.imap.connection import ImapConnection


def capability(conn: ImapConnection, cur: Cursor, uid: bool) -> Event | None:
    conn._send(responses.untagged(conn._capability_code().encode()))
    conn._complete("OK")
    return None


def noop(conn: ImapConnection, cur: Cursor, uid: bool) -> Event | None:
    if conn.state is State.SELECTED:
        return events.Poll(conn._verb)
    conn._complete("OK")
    return None


def logout(conn: ImapConnection, cur: Cursor, uid: bool) -> Event | None:
    conn._send(responses.BYE_LOGOUT)
    conn._complete("OK")
    conn._end(by_peer=False)
    return None


def id_(conn: ImapConnection, cur: Cursor, uid: bool) -> Event | None:
    commands.id_params(cur)
    s = responses.string
    pairs = b" ".join(
        s(k.encode()) + b" " + s(v.encode()) for k, v in conn.options.server_id.items()
    )
    conn._send(responses.untagged(b"ID (" + pairs + b")" if pairs else b"ID NIL"))
    conn._complete("OK")
    return None


def starttls(conn: ImapConnection, cur: Cursor, uid: bool) -> Event | None:
    o = conn.options
    if o.tls_active or not o.tls_available:
        conn._complete("BAD", "TLS is not available here")
        return None
    return events.StartTls()


def login(conn: ImapConnection, cur: Cursor, uid: bool) -> Event | None:
    if not conn._login_allowed():
        conn._complete("NO", "Plaintext login is disabled", "PRIVACYREQUIRED")
        return None
    return commands.login(cur, conn.ctx())


def authenticate(conn: ImapConnection, cur: Cursor, uid: bool) -> Event | None:
    mech = cur.atom().decode("ascii").upper()
    initial = None
    if not cur.at_end():
        cur.sp()
        initial = cur.run(ATOM_CHARS | {ord("=")}).decode("ascii")
    cur.end()
    if not conn._login_allowed():
        conn._complete("NO", "Plaintext login is disabled", "PRIVACYREQUIRED")
        return None
    if mech not in sasl.MECHANISMS:
        conn._complete("NO", "Unsupported authentication mechanism")
        return None
    conn._sasl = sasl.SaslServer(mech)
    conn.mode = Mode.AUTHENTICATE
    return conn._sasl_outcome(conn._sasl.start(initial))


def select(conn: ImapConnection, cur: Cursor, uid: bool) -> Event | None:
    event = commands.select(cur, conn.ctx(), conn._verb == "EXAMINE")
    # RFC 3501 §6.3.1: the old mailbox is left before the new one is
    # tried, without expunging; a failed SELECT leaves none.
    conn.view = None
    conn.mailbox = None
    if conn.state is State.SELECTED:
        conn.state = State.AUTHENTICATED
    return event


def create(conn: ImapConnection, cur: Cursor, uid: bool) -> Event | None:
    event = commands.create(cur, conn.ctx())
    if event.mailbox == "INBOX":
        conn._complete("NO", "INBOX always exists", "ALREADYEXISTS")
        return None
    return event


def delete(conn: ImapConnection, cur: Cursor, uid: bool) -> Event | None:
    name = commands.one_mailbox(cur, conn.ctx())
    if name == "INBOX":
        conn._complete("NO", "INBOX cannot be deleted", "CANNOT")
        return None
    return events.Delete(name)


def rename(conn: ImapConnection, cur: Cursor, uid: bool) -> Event | None:
    return commands.rename(cur, conn.ctx())


def subscribe(conn: ImapConnection, cur: Cursor, uid: bool) -> Event | None:
    name = commands.one_mailbox(cur, conn.ctx())
    if conn._verb == "SUBSCRIBE":
        return events.Subscribe(name)
    return events.Unsubscribe(name)


def list_(conn: ImapConnection, cur: Cursor, uid: bool) -> Event | None:
    if conn._verb == "LSUB":
        event = commands.lsub(cur, conn.ctx())
        conn._list_options = ListOptions()
    else:
        event, conn._list_options = commands.list_(cur, conn.ctx())
    if event.patterns == ("",) and not event.lsub:
        # RFC 3501 §6.3.8: the delimiter and root of the reference.
        d = responses.string(conn.options.delimiter.encode())
        conn._send(b"* LIST (\\Noselect) " + d + b' ""\r\n')
        conn._complete("OK")
        return None
    return event


def status(conn: ImapConnection, cur: Cursor, uid: bool) -> Event | None:
    return commands.status(cur, conn.ctx())


def append(conn: ImapConnection, cur: Cursor, uid: bool) -> Event | None:
    return commands.append(cur, conn.ctx())


def namespace(conn: ImapConnection, cur: Cursor, uid: bool) -> Event | None:
    d = responses.string(conn.options.delimiter.encode())
    conn._send(b'* NAMESPACE (("" ' + d + b")) NIL NIL\r\n")
    conn._complete("OK")
    return None


def enable(conn: ImapConnection, cur: Cursor, uid: bool) -> Event | None:
    enabled = []
    for cap in commands.enable(cur):
        if cap in ("UTF8=ACCEPT", "IMAP4REV2") and not conn.utf8:
            conn.utf8 = True
            enabled.append("UTF8=ACCEPT")
    conn._send(responses.untagged(" ".join(["ENABLED", *enabled]).encode()))
    conn._complete("OK")
    return None


def idle(conn: ImapConnection, cur: Cursor, uid: bool) -> Event | None:
    return events.Idle()


def close(conn: ImapConnection, cur: Cursor, uid: bool) -> Event | None:
    assert conn.view is not None
    expunge = conn._verb == "CLOSE" and not conn.view.read_only
    return events.Close(expunge)


def expunge(conn: ImapConnection, cur: Cursor, uid: bool) -> Event | None:
    assert conn.view is not None
    if conn.view.read_only:
        conn._complete("NO", "Mailbox is read-only")
        return None
    if uid:
        return commands.uid_expunge(cur, conn.ctx())
    cur.end()
    return events.Expunge(None)


def search(conn: ImapConnection, cur: Cursor, uid: bool) -> Event | None:
    return commands.search(cur, conn.ctx(), uid)


def fetch(conn: ImapConnection, cur: Cursor, uid: bool) -> Event | None:
    event = commands.fetch(cur, conn.ctx(), uid)
    return _nonempty(conn, event)


def store(conn: ImapConnection, cur: Cursor, uid: bool) -> Event | None:
    assert conn.view is not None
    event = commands.store(cur, conn.ctx(), uid)
    if conn.view.read_only:
        conn._complete("NO", "Mailbox is read-only")
        return None
    return _nonempty(conn, event)


def copy(conn: ImapConnection, cur: Cursor, uid: bool) -> Event | None:
    assert conn.view is not None
    move = conn._verb == "MOVE"
    event = commands.copy(cur, conn.ctx(), uid, move)
    if move and conn.view.read_only:
        conn._complete("NO", "Mailbox is read-only")
        return None
    return _nonempty(conn, event)


def _nonempty(
    conn: ImapConnection, event: events.Fetch | events.Store | events.Copy
) -> Event | None:
    # A UID set that names no message is not an error (RFC 3501
    # §6.4.8): answer it here, the driver has nothing to do.
    if event.uids:
        return event
    conn._complete("OK", "No messages matched" if conn._verb != "FETCH" else "")
    return None


Handler = Callable[["ImapConnection", Cursor, bool], "Event | None"]
_ANY = frozenset(State) - {State.LOGOUT}
_PRE = frozenset({State.NOT_AUTHENTICATED})
_AUTH = frozenset({State.AUTHENTICATED, State.SELECTED})
_SEL = frozenset({State.SELECTED})
UID_VERBS = frozenset({"FETCH", "SEARCH", "STORE", "COPY", "MOVE", "EXPUNGE"})


def wrong_state(state: State, valid: frozenset[State]) -> str:
    if valid == _PRE:
        return "Already logged in"
    if state is State.NOT_AUTHENTICATED:
        return "Log in first"
    if valid == _SEL:
        return "No mailbox selected"
    return "Not valid while a mailbox is selected"


COMMANDS: dict[str, tuple[frozenset[State], Handler, bool]] = {
    "CAPABILITY": (_ANY, capability, False),
    "NOOP": (_ANY, noop, False),
    "LOGOUT": (_ANY, logout, False),
    "ID": (_ANY, id_, True),
    "STARTTLS": (_PRE, starttls, False),
    "LOGIN": (_PRE, login, True),
    "AUTHENTICATE": (_PRE, authenticate, True),
    "SELECT": (_AUTH, select, True),
    "EXAMINE": (_AUTH, select, True),
    "CREATE": (_AUTH, create, True),
    "DELETE": (_AUTH, delete, True),
    "RENAME": (_AUTH, rename, True),
    "SUBSCRIBE": (_AUTH, subscribe, True),
    "UNSUBSCRIBE": (_AUTH, subscribe, True),
    "LIST": (_AUTH, list_, True),
    "LSUB": (_AUTH, list_, True),
    "STATUS": (_AUTH, status, True),
    "APPEND": (_AUTH, append, True),
    "NAMESPACE": (_AUTH, namespace, False),
    "ENABLE": (frozenset({State.AUTHENTICATED}), enable, True),
    "IDLE": (_AUTH, idle, False),
    "CHECK": (_SEL, noop, False),
    "CLOSE": (_SEL, close, False),
    "UNSELECT": (_SEL, close, False),
    "EXPUNGE": (_SEL, expunge, False),
    "SEARCH": (_SEL, search, True),
    "FETCH": (_SEL, fetch, True),
    "STORE": (_SEL, store, True),
    "COPY": (_SEL, copy, True),
    "MOVE": (_SEL, copy, True),
}
