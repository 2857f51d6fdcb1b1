"""Streamed FETCH responses (``ImapConnection.streaming``): rendered a
budget at a time, they must come out byte for byte as the whole
response would, in order with the commands pipelined after them, and
a BYE may cut them only between two messages."""

from __future__ import annotations

import pytest
from imap_fakes import CoreDriver, FakeStore, lines_of

from postroom.protocol.imap import events as E
from postroom.protocol.imap.connection import ImapOptions, State

BULK = b"f UID FETCH 1:* (UID FLAGS BODY.PEEK[] RFC822.SIZE)\r\n"


def store_with(n: int) -> FakeStore:
    store = FakeStore()
    inbox = store.mailboxes["INBOX"]
    for i in range(n):
        body = b"line %d\r\n" % i * (i % 7 + 1)
        inbox.add(b"Subject: %d\r\n\r\n" % i + body, {"\\Seen"} if i % 3 else None)
    return store


def selected(n: int, budget: int) -> CoreDriver:
    opts = ImapOptions(login_without_tls=True, render_budget=budget)
    d = CoreDriver(opts, store_with(n))
    d.send(b"a LOGIN alice secret\r\nb SELECT INBOX\r\n")
    assert d.conn.state is State.SELECTED
    return d


def answer_only(d: CoreDriver) -> None:
    """Answer the events buffered so far without draining the output."""
    while True:
        event = d.conn.next_event()
        if event is E.NEED_DATA or event is E.PAUSED:
            return
        assert not isinstance(event, E._Sentinel)
        d.conn.respond(d.answer(event))
        if d.conn.streaming:
            return


def streamed(d: CoreDriver, data: bytes, budget: int) -> tuple[bytes, int]:
    """Feed *data*, drain with ``chunks_to_send(budget)``; the output
    and how many pieces it came in."""
    d.conn.receive_data(data)
    out = bytearray()
    pieces = 0
    while True:
        answer_only(d)
        if not d.conn.streaming:
            break
        while d.conn.streaming:
            out += b"".join(d.conn.chunks_to_send(budget))
            pieces += 1
    out += d.conn.data_to_send()
    return bytes(out), pieces


@pytest.mark.parametrize("budget", [0, 1, 100, 1000])
def test_streamed_output_is_the_whole_response(budget: int) -> None:
    whole = selected(200, budget=1 << 30).send(BULK)
    d = selected(200, budget=budget)
    out, pieces = streamed(d, BULK, budget)
    assert out == whole
    assert lines_of(out)[-1] == "f OK UID FETCH completed"
    assert pieces > 1


def test_each_piece_holds_whole_responses() -> None:
    d = selected(20, budget=1)
    d.conn.receive_data(BULK)
    answer_only(d)
    # One message by respond (its budget), one more by chunks_to_send.
    first = b"".join(d.conn.chunks_to_send(1))
    assert first.startswith(b"* 1 FETCH (") and first.endswith(b")\r\n")
    assert first.count(b" FETCH (") == 2
    second = b"".join(d.conn.chunks_to_send(1))
    assert second.startswith(b"* 3 FETCH (") and second.count(b" FETCH (") == 1


def test_pipelined_commands_wait_for_the_stream() -> None:
    # A driver that asks for the next event while a response streams
    # gets it only after the rest of the response (and its tagged OK).
    d = selected(30, budget=1)
    out = d.send(BULK + b"n NOOP\r\n")
    lines = lines_of(out)
    assert lines[-2:] == ["f OK UID FETCH completed", "n OK NOOP completed"]
    assert out.count(b" FETCH (") == 30


def test_news_wait_for_the_end_of_the_stream() -> None:
    d = selected(10, budget=1)
    d.conn.receive_data(BULK)
    answer_only(d)
    assert d.conn.streaming
    d.conn.update(E.MailboxUpdate(added=[99], expunged=[2], flags={}, recent=None))
    out = b""
    while d.conn.streaming:
        out += b"".join(d.conn.chunks_to_send(1))
    lines = lines_of(out)
    # Numbers stay as they were while the response streams; the news
    # come at its end (UID FETCH may report an EXPUNGE, RFC 3501
    # §7.4.1), before the tagged OK.
    assert out.count(b" FETCH (") == 10 and b"* 2 FETCH (UID 2 " in out
    assert lines[-3:] == ["* 2 EXPUNGE", "* 10 EXISTS", "f OK UID FETCH completed"]


def test_bye_cuts_the_stream_between_messages() -> None:
    d = selected(10, budget=1)
    d.conn.receive_data(BULK)
    answer_only(d)
    d.conn.close("Server shutting down")
    assert not d.conn.streaming
    out = d.conn.data_to_send()
    lines = lines_of(out)
    assert lines[-1] == "* BYE Server shutting down"
    assert out.count(b" FETCH (") == 1
    assert b"f OK" not in out
