"""The IMAP core's rules that transcripts cannot show: STARTTLS and what
it drops, capabilities by state, news from other sessions (EXISTS,
EXPUNGE, FLAGS) and when they may be sent, IDLE, bounds, misuse by the
driver, and end of file."""

from __future__ import annotations

import pytest
from imap_fakes import CoreDriver, FakeStore, lines_of

from postroom.errors import LocalProtocolError
from postroom.protocol.imap import events as E
from postroom.protocol.imap.connection import ImapOptions, Mode, State

MSG = b"Subject: hi\r\n\r\nhello\r\n"


def store_with(n: int) -> FakeStore:
    store = FakeStore()
    for _ in range(n):
        store.mailboxes["INBOX"].add(MSG)
    return store


def selected(n: int = 3, **options: object) -> CoreDriver:
    opts = ImapOptions(login_without_tls=True)
    for k, v in options.items():
        setattr(opts, k, v)
    d = CoreDriver(opts, store_with(n))
    d.send(b"a LOGIN alice secret\r\nb SELECT INBOX\r\n")
    assert d.conn.state is State.SELECTED
    return d


# -- STARTTLS and capabilities -----------------------------------------


def test_plaintext_login_disabled_before_tls() -> None:
    d = CoreDriver(ImapOptions(tls_available=True))
    greeting = lines_of(bytes(d.output))[0]
    assert "LOGINDISABLED" in greeting and "STARTTLS" in greeting
    assert "AUTH=PLAIN" not in greeting
    out = d.send(b"a LOGIN alice secret\r\nb AUTHENTICATE PLAIN\r\n")
    assert lines_of(out) == [
        "a NO [PRIVACYREQUIRED] Plaintext login is disabled",
        "b NO [PRIVACYREQUIRED] Plaintext login is disabled",
    ]


def test_starttls_drops_pipelined_input() -> None:
    # CVE-2011-0411: a LOGIN injected after STARTTLS in cleartext must
    # never be executed inside the TLS session.
    d = CoreDriver(ImapOptions(tls_available=True))
    out = d.send(b"a STARTTLS\r\nb LOGIN alice secret\r\n")
    assert lines_of(out) == ["a OK Begin TLS negotiation now"]
    assert d.conn.mode is Mode.TLS_PENDING
    d.send(b"c LOGIN alice secret\r\n")  # still cleartext: dropped too
    d.conn.tls_started()
    assert d.pump() == b""
    out = d.send(b"d CAPABILITY\r\n")
    caps = lines_of(out)[0]
    assert "STARTTLS" not in caps and "AUTH=PLAIN" in caps
    assert "LOGINDISABLED" not in caps
    assert [type(e) for e in d.events] == [E.StartTls]
    out = d.send(b"e LOGIN alice secret\r\n")
    assert lines_of(out)[0].startswith("e OK [CAPABILITY IMAP4rev1")
    assert "MOVE" in lines_of(out)[0]


def test_starttls_refused_when_active_or_unavailable() -> None:
    d = CoreDriver(ImapOptions())
    assert lines_of(d.send(b"a STARTTLS\r\n")) == ["a BAD TLS is not available here"]
    d = CoreDriver(ImapOptions(tls_available=True, tls_active=True))
    assert lines_of(d.send(b"a STARTTLS\r\n")) == ["a BAD TLS is not available here"]


def test_tls_started_out_of_turn_is_a_driver_bug() -> None:
    d = CoreDriver()
    with pytest.raises(LocalProtocolError):
        d.conn.tls_started()


def test_preauth_greeting() -> None:
    from postroom.protocol.imap.connection import ImapConnection

    conn = ImapConnection(ImapOptions())
    conn.greet(preauth_user="alice")
    assert conn.data_to_send().startswith(b"* PREAUTH [CAPABILITY IMAP4rev1")
    assert conn.state is State.AUTHENTICATED


# -- news from elsewhere -------------------------------------------------


def test_news_sent_at_end_of_command() -> None:
    d = selected(3)
    d.store.mailboxes["INBOX"].add(MSG)
    d.conn.update(E.MailboxUpdate(added=[4], flags={2: ("\\Seen",)}))
    assert d.pump() == b""  # nothing without a command in progress
    out = d.send(b"c NOOP\r\n")
    assert lines_of(out) == [
        "* 4 EXISTS",
        "* 2 FETCH (UID 2 FLAGS (\\Seen))",
        "c OK NOOP completed",
    ]


def test_expunge_held_during_fetch_store_search() -> None:
    # RFC 3501 §7.4.1: no EXPUNGE during FETCH, STORE or SEARCH, since
    # the client could not tell which numbers were meant; UID forms are
    # fine and so is anything else.
    d = selected(3)
    box = d.store.mailboxes["INBOX"]
    box.add(MSG)
    del box.messages[1]
    d.conn.update(E.MailboxUpdate(expunged=[1], added=[4]))
    # The message is gone from the store: the driver leaves it out.
    out = d.send(b"c FETCH 1:2 UID\r\n")
    assert lines_of(out) == ["* 2 FETCH (UID 2)", "* 4 EXISTS", "c OK FETCH completed"]
    out = d.send(b"d SEARCH ALL\r\n")
    assert lines_of(out)[-1] == "d OK SEARCH completed"
    assert "EXPUNGE" not in out.decode()
    out = d.send(b"e UID SEARCH ALL\r\n")
    assert lines_of(out) == [
        "* SEARCH 2 3 4",
        "* 1 EXPUNGE",
        "e OK UID SEARCH completed",
    ]
    out = d.send(b"f FETCH 1:* UID\r\n")
    assert lines_of(out)[:3] == [
        "* 1 FETCH (UID 2)",
        "* 2 FETCH (UID 3)",
        "* 3 FETCH (UID 4)",
    ]


def test_expunges_reported_highest_first() -> None:
    d = selected(5)
    d.conn.update(E.MailboxUpdate(expunged=[2, 4, 5]))
    assert lines_of(d.send(b"c NOOP\r\n")) == [
        "* 5 EXPUNGE",
        "* 4 EXPUNGE",
        "* 2 EXPUNGE",
        "c OK NOOP completed",
    ]
    assert d.conn.view is not None and d.conn.view.uids == [1, 3]


def test_idle_reports_at_once_and_ends_with_done() -> None:
    d = selected(2)
    assert lines_of(d.send(b"c IDLE\r\n")) == ["+ idling"]
    d.conn.update(E.MailboxUpdate(added=[3]))
    assert d.conn.data_to_send() == b"* 3 EXISTS\r\n"
    d.conn.update(E.MailboxUpdate(expunged=[1]))
    assert d.conn.data_to_send() == b"* 1 EXPUNGE\r\n"
    assert lines_of(d.send(b"DONE\r\n")) == ["c OK IDLE terminated"]
    assert isinstance(d.events[-1], E.IdleDone)


def test_fetch_that_sets_seen_reports_flags() -> None:
    d = selected(1)
    out = d.send(b"c FETCH 1 BODY[TEXT]\r\n")
    assert out == (
        b"* 1 FETCH (BODY[TEXT] {7}\r\nhello\r\n FLAGS (\\Seen))\r\n"
        b"c OK FETCH completed\r\n"
    )
    out = d.send(b"c FETCH 1 BODY.PEEK[TEXT]\r\n")
    assert b"FLAGS" not in out


def test_examine_never_sets_seen() -> None:
    d = CoreDriver(store=store_with(1))
    d.send(b"a LOGIN alice secret\r\nb EXAMINE INBOX\r\n")
    out = d.send(b"c FETCH 1 RFC822\r\n")
    assert b"FLAGS" not in out
    assert d.store.mailboxes["INBOX"].messages[1].flags == set()


def test_select_replaces_and_failed_select_unselects() -> None:
    d = selected(1)
    out = d.send(b"c SELECT Nowhere\r\n")
    assert lines_of(out) == ["c NO [NONEXISTENT] No such mailbox"]
    assert d.conn.state is State.AUTHENTICATED and d.conn.view is None


def test_uid_set_naming_nothing_needs_no_driver() -> None:
    d = selected(2)
    before = len(d.events)
    out = d.send(b"c UID FETCH 99:100 FLAGS\r\nd UID STORE 99 +FLAGS (x)\r\n")
    assert lines_of(out) == ["c OK UID FETCH completed", "d OK No messages matched"]
    assert len(d.events) == before


def test_uid_range_with_star_includes_the_last_message() -> None:
    # RFC 3501 §6.4.8: "*" is the largest UID in use, so 99:* is 3:99.
    d = selected(3)
    assert lines_of(d.send(b"c UID FETCH 99:* UID\r\n"))[0] == "* 3 FETCH (UID 3)"


# -- bounds and misbehaviour ---------------------------------------------


def test_line_too_long_is_bad_and_skipped() -> None:
    d = CoreDriver(ImapOptions(login_without_tls=True, max_line=100))
    out = d.send(b"a1 NOOP " + b"x" * 300)
    assert out == b""  # the line is dropped as it comes
    out = d.send(b"x" * 300 + b"\r\na2 NOOP\r\n")
    assert lines_of(out) == ["a1 BAD Command line too long", "a2 OK NOOP completed"]


def test_non_synchronizing_literal_too_big_is_read_and_dropped() -> None:
    d = CoreDriver(ImapOptions(login_without_tls=True, max_literal=10))
    out = d.send(b"a1 LOGIN alice {20+}\r\n" + b"p" * 20 + b"\r\na2 NOOP\r\n")
    assert lines_of(out) == [
        "a1 BAD [TOOBIG] Literal too big",
        "a2 OK NOOP completed",
    ]
    assert d.conn.buffered == 0


def test_literals_before_login_are_small() -> None:
    # Before login a literal only carries a name or password: a client
    # that has not authenticated cannot make us hold megabytes.
    d = CoreDriver(ImapOptions(login_without_tls=True))
    out = d.send(b"a1 LOGIN alice {9000}\r\n")
    assert lines_of(out) == ["a1 NO [TOOBIG] Literal too big"]
    d.send(b"a2 LOGIN alice secret\r\n")
    out = d.send(b"a3 APPEND INBOX {9000}\r\n")
    assert lines_of(out) == ["+ Ready for literal data"]


def test_too_many_bad_commands_ends_the_session() -> None:
    d = CoreDriver(ImapOptions(max_bad_commands=3))
    out = d.send(b"a X\r\nb X\r\nc X\r\nd NOOP\r\n")
    assert lines_of(out) == [
        "a BAD Unknown command",
        "b BAD Unknown command",
        "c BAD Unknown command",
        "* BYE Too many invalid commands",
    ]
    assert isinstance(d.events[-1], E.Closed) and not d.events[-1].by_peer


def test_end_of_file() -> None:
    d = CoreDriver()
    d.send(b"a NOOP")
    d.eof()
    assert d.events == [E.Closed(by_peer=True)]
    assert d.conn.state is State.LOGOUT


def test_close_from_our_side() -> None:
    d = CoreDriver()
    d.conn.close("Idle for too long")
    assert d.conn.data_to_send() == b"* BYE Idle for too long\r\n"
    d.send(b"a NOOP\r\n")
    assert d.conn.data_to_send() == b""


def test_driver_misuse_raises() -> None:
    d = CoreDriver()
    with pytest.raises(LocalProtocolError):
        d.conn.respond(E.Done())
    with pytest.raises(LocalProtocolError):
        d.conn.greet()

    def wrong(ev: E.Event) -> E.Answer | None:
        return E.Done() if isinstance(ev, E.Select) else None

    d = CoreDriver(answer=wrong)
    with pytest.raises(LocalProtocolError):
        d.send(b"a LOGIN alice secret\r\nb SELECT INBOX\r\n")


def test_refused_with_bad() -> None:
    d = CoreDriver(answer=lambda ev: E.Refused("No", bad=True))
    assert lines_of(d.send(b"a LOGIN x y\r\n")) == ["a BAD No"]


def test_chunks_keep_message_bytes_uncopied() -> None:
    d = selected(1)
    d.conn.receive_data(b"c FETCH 1 BODY.PEEK[]\r\n")
    while (ev := d.conn.next_event()) not in (E.NEED_DATA, E.PAUSED):
        assert isinstance(ev, E.Fetch)
        stored = d.store.mailboxes["INBOX"].messages[1]
        d.conn.respond(E.Messages([E.MessageData(1, (), None, None, stored.content)]))
    chunks = d.conn.chunks_to_send()
    assert any(isinstance(c, memoryview) and c.obj is stored.content for c in chunks)


def test_enable_utf8_accept() -> None:
    d = CoreDriver()
    d.send(b"a LOGIN alice secret\r\n")
    assert lines_of(d.send(b"b ENABLE UTF8=ACCEPT CONDSTORE\r\n")) == [
        "* ENABLED UTF8=ACCEPT",
        "b OK ENABLE completed",
    ]
    out = d.send('c CREATE "Entwürfe"\r\nd LIST "" Entw*\r\n'.encode())
    assert '* LIST (\\HasNoChildren) "/" "Entwürfe"' in out.decode()
    assert "Entwürfe" in d.store.mailboxes


def test_list_percent_shows_hierarchy_levels_as_noselect() -> None:
    store = FakeStore()
    store.create("Work/Old")
    d = CoreDriver(store=store)
    d.send(b"a LOGIN alice secret\r\n")
    assert lines_of(d.send(b'b LIST "" %\r\n')) == [
        '* LIST (\\HasNoChildren) "/" INBOX',
        '* LIST (\\Noselect \\HasChildren) "/" Work',
        "b OK LIST completed",
    ]
    assert lines_of(d.send(b'c LIST "" *\r\n')) == [
        '* LIST (\\HasNoChildren) "/" INBOX',
        '* LIST (\\HasNoChildren) "/" Work/Old',
        "c OK LIST completed",
    ]


def test_alert() -> None:
    d = CoreDriver()
    d.conn.alert("Mailbox 95% full")
    assert d.conn.data_to_send() == b"* OK [ALERT] Mailbox 95% full\r\n"


def test_binary_of_unknown_encoding_is_no_unknown_cte() -> None:
    store = FakeStore()
    store.mailboxes["INBOX"].add(b"Content-Transfer-Encoding: x-foo\r\n\r\nzz\r\n")
    d = CoreDriver(store=store)
    d.send(b"a LOGIN alice secret\r\nb SELECT INBOX\r\n")
    out = d.send(b"c FETCH 1 BINARY.PEEK[1]\r\n")
    assert lines_of(out) == ["c NO [UNKNOWN-CTE] Cannot decode the part"]
