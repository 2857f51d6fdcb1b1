"""How the core turns the driver's answer to an event into responses.

One function per event type, called by ``ImapConnection.respond`` after
it has dealt with ``Refused`` (a tagged NO or BAD for every event). Each
checks that the answer is one its event takes (a wrong one is a driver
bug: ``LocalProtocolError``), renders the untagged data, changes the
session state where the command succeeded, and completes the command.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from postroom.errors import LocalProtocolError
from postroom.protocol.imap import events, fetch, listing, responses
from postroom.protocol.imap.fetch import Chunk
from postroom.protocol.imap.search import Matcher
from postroom.protocol.imap.sections import UnknownCte
from postroom.protocol.imap.states import Mode, State
from postroom.protocol.imap.view import MailboxView

if TYPE_CHECKING:
    from postroom.protocol.imap.connection import ImapConnection

T = TypeVar("T")


def _expect(answer: object, *kinds: type[T]) -> T:
    if not isinstance(answer, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise LocalProtocolError(f"expected {names}, got {type(answer).__name__}")
    return answer


def _done(conn: ImapConnection, answer: object) -> None:
    done = _expect(answer, events.Done)
    conn._complete("OK", done.text, done.code)


def login(conn: ImapConnection, event: events.Login, answer: object) -> None:
    done = _expect(answer, events.Done)
    conn._logged_in(event.username)
    # RFC 3501 §6.2.3 lets the tagged OK carry the new capabilities,
    # which saves clients a CAPABILITY round trip.
    conn._complete("OK", done.text or "Logged in", conn._capability_code())


def starttls(conn: ImapConnection, event: events.StartTls, answer: object) -> None:
    _expect(answer, events.Done)
    conn._complete("OK", "Begin TLS negotiation now")
    # CVE-2011-0411: whatever was pipelined after STARTTLS is dropped.
    conn._framer.reset()
    conn.mode = Mode.TLS_PENDING


def select(conn: ImapConnection, event: events.Select, answer: object) -> None:
    snap = _expect(answer, events.MailboxSnapshot)
    read_only = event.read_only or snap.read_only
    view = MailboxView(snap.uids, uidvalidity=snap.uidvalidity, read_only=read_only)
    permanent = () if read_only else snap.permanent_flags
    if permanent is None:
        permanent = (*snap.flags, "\\*")
    send = conn._send
    send(b"* FLAGS " + responses.flag_list(snap.flags) + b"\r\n")
    send(b"* %d EXISTS\r\n" % view.exists)
    send(b"* %d RECENT\r\n" % snap.recent)
    ok = responses.status_line
    if snap.first_unseen:
        send(ok("*", "OK", "First unseen", f"UNSEEN {snap.first_unseen}"))
    send(ok("*", "OK", "UIDs valid", f"UIDVALIDITY {snap.uidvalidity}"))
    send(ok("*", "OK", "Predicted next UID", f"UIDNEXT {snap.uidnext}"))
    code = "PERMANENTFLAGS " + responses.flag_list(permanent).decode("ascii")
    send(ok("*", "OK", "Flags permitted", code))
    conn.view, conn.mailbox, conn.state = view, event.mailbox, State.SELECTED
    conn._complete("OK", "", "READ-ONLY" if read_only else "READ-WRITE")


def simple(conn: ImapConnection, event: object, answer: object) -> None:
    _done(conn, answer)


def list_(conn: ImapConnection, event: events.List, answer: object) -> None:
    found = _expect(answer, events.Listing)
    conn._out.extend(
        listing.render(
            event,
            conn._list_options,
            found.mailboxes,
            delimiter=conn.options.delimiter,
            utf8=conn.utf8,
        )
    )
    conn._complete("OK")


def status(conn: ImapConnection, event: events.Status, answer: object) -> None:
    data = _expect(answer, events.StatusData)
    try:
        pairs = " ".join(f"{item} {data.values[item]}" for item in event.items)
    except KeyError as e:
        raise LocalProtocolError(f"STATUS answer lacks {e}") from None
    name = responses.mailbox(event.mailbox, utf8=conn.utf8)
    conn._send(b"* STATUS " + name + b" (" + pairs.encode() + b")\r\n")
    conn._complete("OK")


def append(conn: ImapConnection, event: events.Append, answer: object) -> None:
    if isinstance(answer, events.Done):
        conn._complete("OK", answer.text, answer.code)
        return
    result = _expect(answer, events.Appended)
    uids = responses.uid_set(result.uids)
    conn._complete("OK", "", f"APPENDUID {result.uidvalidity} {uids}")


def close(conn: ImapConnection, event: events.Close, answer: object) -> None:
    _expect(answer, events.Done)
    # CLOSE expunges silently (RFC 3501 §6.4.2): news die with the view.
    conn.view, conn.mailbox, conn.state = None, None, State.AUTHENTICATED
    conn._complete("OK")


def expunge(conn: ImapConnection, event: events.Expunge, answer: object) -> None:
    gone = _expect(answer, events.Expunged)
    _report_expunged(conn, gone.uids)
    conn._complete("OK")


def _report_expunged(conn: ImapConnection, uids: Any) -> None:
    view = conn.view
    assert view is not None
    for uid in sorted(uids, reverse=True):
        seq = view.remove(uid)
        if seq:
            conn._send(b"* %d EXPUNGE\r\n" % seq)


def search(conn: ImapConnection, event: events.Search, answer: object) -> None:
    found = _expect(answer, events.Messages)
    view = conn.view
    assert view is not None
    matcher = Matcher(event.key, largest_seq=view.exists, largest_uid=view.largest_uid)
    hits = []
    for message in found.messages:
        seq = view.seq_of(message.uid)
        if seq and matcher.matches(seq, message):
            hits.append(message.uid if event.uid else seq)
    hits.sort()
    conn._send(b"* SEARCH" + b"".join(b" %d" % n for n in hits) + b"\r\n")
    conn._complete("OK")


def fetch_(conn: ImapConnection, event: events.Fetch, answer: object) -> None:
    found = _expect(answer, events.Messages)
    messages = sorted(found.messages, key=lambda m: m.uid)
    # Rendered as the driver writes (see "Streaming" in connection.py);
    # a small FETCH is done within the budget and goes out in one piece.
    conn._stream = _fetch_responses(conn, event, messages)
    conn._render(conn.options.render_budget)


def _fetch_responses(
    conn: ImapConnection, event: events.Fetch, messages: Sequence[events.MessageData]
) -> Iterator[list[Chunk]]:
    """Each message's FETCH response; then the command's completion."""
    view = conn.view
    assert view is not None
    request = event.request
    flags = request.sets_seen and not view.read_only
    key = (request, event.uid, flags, conn.utf8)
    plan = conn._fetch_plans.get(key)
    if plan is None:
        plan = fetch.Plan(request, with_uid=event.uid, with_flags=flags, utf8=conn.utf8)
        if len(conn._fetch_plans) < 16:  # A client asks for a few things.
            conn._fetch_plans[key] = plan
    seq_of = view.seq_of
    for message in messages:
        seq = seq_of(message.uid)
        if not seq:
            continue
        try:
            chunks = plan.render(seq, message)
        except UnknownCte:
            conn._complete("NO", "Cannot decode the part", "UNKNOWN-CTE")
            return
        yield chunks
    conn._complete("OK")


def store(conn: ImapConnection, event: events.Store, answer: object) -> None:
    found = _expect(answer, events.Messages)
    view = conn.view
    assert view is not None
    if not event.silent:
        for message in sorted(found.messages, key=lambda m: m.uid):
            seq = view.seq_of(message.uid)
            if not seq:
                continue
            uid = b"UID %d " % message.uid if event.uid else b""
            conn._send(
                b"* %d FETCH (%sFLAGS %s)\r\n"
                % (seq, uid, responses.flag_list(message.flags))
            )
    conn._complete("OK")


def copy(conn: ImapConnection, event: events.Copy, answer: object) -> None:
    if isinstance(answer, events.Done) and not event.move:
        conn._complete("OK", answer.text, answer.code)
        return
    result = _expect(answer, events.Copied)
    code = (
        f"COPYUID {result.uidvalidity} {responses.uid_set(result.source_uids)} "
        f"{responses.uid_set(result.dest_uids)}"
    )
    if not event.move:
        conn._complete("OK", "", code)
        return
    # RFC 6851 §4.3: COPYUID goes in an untagged OK before the expunges.
    conn._send(responses.status_line("*", "OK", "Moved", code))
    _report_expunged(conn, result.source_uids)
    conn._complete("OK")


def idle(conn: ImapConnection, event: events.Idle, answer: object) -> None:
    _expect(answer, events.Done)
    conn._send(responses.continuation("idling"))
    conn.mode = Mode.IDLE
    if conn.view is not None:
        conn._out.extend(conn.view.flush(expunges=True))


Handler = Callable[["ImapConnection", Any, object], None]
HANDLERS: dict[type, Handler] = {
    events.Login: login,
    events.StartTls: starttls,
    events.Select: select,
    events.Create: simple,
    events.Delete: simple,
    events.Rename: simple,
    events.Subscribe: simple,
    events.Unsubscribe: simple,
    events.List: list_,
    events.Status: status,
    events.Append: append,
    events.Poll: simple,
    events.Close: close,
    events.Expunge: expunge,
    events.Search: search,
    events.Fetch: fetch_,
    events.Store: store,
    events.Copy: copy,
    events.Idle: idle,
}
