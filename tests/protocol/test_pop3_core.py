"""The POP3 server core, bytes in and lines and events out, no sockets.

Conversations run through ``postroom.testing.pop3.run``, which answers
every event from a ``FakeMaildrop``. Status lines are compared with the
constants in ``responses``. The last section feeds conversations split
at every byte boundary.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest

from postroom.errors import LocalProtocolError
from postroom.protocol.pop3 import content, events, responses
from postroom.protocol.pop3.events import NEED_DATA, PAUSED
from postroom.protocol.pop3.server import (
    COMMAND_LINE_LIMIT,
    HARD_ERROR_LIMIT,
    Options,
    ServerConnection,
    State,
)
from postroom.testing.pop3 import (
    ALICE,
    APOP_SECRET,
    PASSWORD,
    FakeMaildrop,
    message,
    run,
)

LOGIN = f"USER {ALICE}\r\nPASS {PASSWORD}\r\n".encode()
GREETING = b"+OK Postroom POP3 server ready\r\n"
PLAIN = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()).decode()


def lines(output: bytes) -> list[bytes]:
    """The output after the greeting, one item per line, CRLF cut off."""
    assert output.startswith(GREETING)
    return output[len(GREETING) :].split(b"\r\n")[:-1]


def statuses(output: bytes) -> list[bytes]:
    """Only the status lines (+OK/-ERR) of *output*."""
    return [
        line for line in lines(output) if line.startswith((b"+OK", b"-ERR"))
    ]


def after_login(commands: bytes, **kw: object) -> list[bytes]:
    got = run([LOGIN + commands], **kw)  # type: ignore[arg-type]
    out = lines(got.output)
    assert out[:2] == [b"+OK send PASS", b"+OK maildrop has 2 messages (222 octets)"]
    return out[2:]


# -- AUTHORIZATION ---------------------------------------------------------------


def test_user_pass_logs_in() -> None:
    got = run([LOGIN + b"QUIT\r\n"])

    assert got.events == ["Login", "Update", "Closed"]
    assert statuses(got.output)[-1].startswith(b"+OK Postroom POP3 server signing off")


@pytest.mark.parametrize(
    "commands, want",
    [
        (f"USER {ALICE}\r\nPASS wrong\r\n", responses.AUTH_FAILED),
        ("PASS secret\r\n", responses.PASS_WITHOUT_USER),
        # PASS must follow USER at once (RFC 1939 §7).
        (f"USER {ALICE}\r\nCAPA\r\nPASS {PASSWORD}\r\n", responses.PASS_WITHOUT_USER),
        ("STAT\r\n", responses.WRONG_STATE),
        ("NOOP\r\n", responses.WRONG_STATE),
        ("XYZZY\r\n", responses.UNKNOWN_COMMAND),
        ("USER\r\n", responses.SYNTAX),
        ("AUTH CRAM-MD5\r\n", responses.UNSUPPORTED_MECHANISM),
        ("STLS\r\n", responses.TLS_UNAVAILABLE),
        ("APOP alice 0123456789abcdef0123456789abcdef\r\n", responses.APOP_UNAVAILABLE),
        ("LIST 1\r\n", responses.WRONG_STATE),
    ],
)
def test_authorization_refusals(commands: str, want: responses.Response) -> None:
    got = run([commands.encode()])

    assert statuses(got.output)[-1] == want.wire.rstrip(b"\r\n")


def test_login_to_locked_maildrop_says_in_use() -> None:
    drop = FakeMaildrop(locked={ALICE})

    got = run([LOGIN + b"STAT\r\n"], maildrop=drop)

    assert statuses(got.output)[1:] == [
        b"-ERR [IN-USE] maildrop is in use by another session",
        responses.WRONG_STATE.wire.rstrip(),
    ]


def test_auth_plain_with_initial_response() -> None:
    got = run([f"AUTH PLAIN {PLAIN}\r\nSTAT\r\n".encode()])

    assert statuses(got.output) == [
        b"+OK maildrop has 2 messages (222 octets)",
        b"+OK 2 222",
    ]


def test_auth_plain_with_challenge_and_cancel() -> None:
    got = run([f"AUTH PLAIN\r\n*\r\nAUTH PLAIN\r\n{PLAIN}\r\n".encode()])

    assert lines(got.output) == [
        b"+ ",
        responses.AUTH_CANCELLED.wire.rstrip(),
        b"+ ",
        b"+OK maildrop has 2 messages (222 octets)",
    ]


def test_auth_plain_as_another_user_is_refused() -> None:
    other = base64.b64encode(f"bob\0{ALICE}\0{PASSWORD}".encode()).decode()

    got = run([f"AUTH PLAIN {other}\r\n".encode()])

    assert statuses(got.output) == [responses.AUTHZID_REFUSED.wire.rstrip()]
    assert got.events == ["Closed"]


def test_bare_auth_lists_mechanisms() -> None:
    got = run([b"AUTH\r\n"])

    assert lines(got.output) == [
        b"+OK SASL mechanisms follow",
        b"PLAIN",
        b"LOGIN",
        b".",
    ]


def test_plaintext_refused_before_tls_unless_allowed() -> None:
    options = Options(tls_available=True, plaintext_allowed=False)

    got = run([b"CAPA\r\n" + LOGIN + f"AUTH PLAIN {PLAIN}\r\n".encode()], options)

    out = lines(got.output)
    assert b"USER" not in out and b"STLS" in out
    assert not any(line.startswith(b"SASL") for line in out)
    assert statuses(got.output)[1:] == [responses.PLAINTEXT_DISABLED.wire.rstrip()] * 3


def test_stls_then_login_and_pipelined_cleartext_dropped() -> None:
    options = Options(tls_available=True, plaintext_allowed=False)

    # Everything after STLS in the same read is cleartext injected
    # before the handshake: it must never be executed.
    got = run([b"STLS\r\n" + LOGIN, b"CAPA\r\n" + LOGIN + b"STAT\r\n"], options)

    out = lines(got.output)
    assert out[0] == responses.BEGIN_TLS.wire.rstrip()
    assert b"STLS" not in out and b"USER" in out
    assert statuses(got.output)[-3:] == [
        b"+OK send PASS",
        b"+OK maildrop has 2 messages (222 octets)",
        b"+OK 2 222",
    ]
    assert got.events.count("Login") == 1


def test_stls_twice_is_refused() -> None:
    options = Options(tls_available=True)

    got = run([b"STLS\r\n", b"STLS\r\n"], options)

    assert statuses(got.output) == [
        responses.BEGIN_TLS.wire.rstrip(),
        responses.TLS_ACTIVE.wire.rstrip(),
    ]


def test_apop_when_enabled() -> None:
    stamp = "<1896.697170952@mx.postroom.test>"
    digest = content.apop_digest(stamp, APOP_SECRET)
    options = Options(apop_timestamp=stamp)

    good = run([f"APOP {ALICE} {digest}\r\n".encode()], options)
    bad = run([f"APOP {ALICE} {'0' * 32}\r\n".encode()], options)

    assert good.output.startswith(f"+OK Postroom POP3 server ready {stamp}".encode())
    assert good.output.endswith(b"+OK maildrop has 2 messages (222 octets)\r\n")
    assert bad.output.endswith(responses.AUTH_FAILED.wire)


# -- TRANSACTION -----------------------------------------------------------------


def test_capa_in_transaction_offers_no_login() -> None:
    out = after_login(b"CAPA\r\n")

    assert out == [
        b"+OK Capability list follows",
        b"TOP",
        b"UIDL",
        b"RESP-CODES",
        b"PIPELINING",
        b"IMPLEMENTATION Postroom",
        b".",
    ]


def test_stat_list_uidl() -> None:
    out = after_login(b"STAT\r\nLIST\r\nLIST 2\r\nUIDL\r\nUIDL 1\r\n")

    assert out == [
        b"+OK 2 222",
        b"+OK scan listing follows",
        b"1 111",
        b"2 111",
        b".",
        b"+OK 2 111",
        b"+OK unique-id listing follows",
        b"1 7.1",
        b"2 7.2",
        b".",
        b"+OK 1 7.1",
    ]


@pytest.mark.parametrize(
    "command, want",
    [
        (b"LIST 3", responses.NO_SUCH_MESSAGE),
        (b"LIST 0", responses.NO_SUCH_MESSAGE),
        (b"RETR -1", responses.SYNTAX),
        (b"RETR x", responses.SYNTAX),
        (b"RETR 1234567890", responses.SYNTAX),
        (b"RETR \xd9\xa1", responses.SYNTAX),  # an Arabic-Indic digit one
        (b"TOP 1", responses.SYNTAX),
        (b"TOP 1 -2", responses.SYNTAX),
        (b"DELE", responses.SYNTAX),
        (b"STAT 1", responses.SYNTAX),
        (b"USER bob", responses.WRONG_STATE),
        (b"STLS", responses.WRONG_STATE),
    ],
)
def test_transaction_refusals(command: bytes, want: responses.Response) -> None:
    out = after_login(command + b"\r\n")

    assert out == [want.wire.rstrip()]


def test_dele_marks_until_quit_and_rset_unmarks() -> None:
    drop = FakeMaildrop()

    run([LOGIN + b"DELE 1\r\nRSET\r\nDELE 2\r\nQUIT\r\n"], maildrop=drop)

    assert drop.removed == [2]


def test_deleted_message_is_gone_from_listings() -> None:
    out = after_login(b"DELE 1\r\nSTAT\r\nLIST\r\nRETR 1\r\nDELE 1\r\nUIDL\r\n")

    assert out == [
        b"+OK message 1 deleted",
        b"+OK 1 111",
        b"+OK scan listing follows",
        b"2 111",
        b".",
        responses.ALREADY_DELETED.wire.rstrip(),
        responses.ALREADY_DELETED.wire.rstrip(),
        b"+OK unique-id listing follows",
        b"2 7.2",
        b".",
    ]


def test_end_of_file_removes_nothing() -> None:
    drop = FakeMaildrop()

    got = run([LOGIN + b"DELE 1\r\nDELE 2\r\n"], maildrop=drop)

    assert drop.removed == []
    assert got.events[-1] == "Closed"


def test_failed_update_says_sys_temp() -> None:
    drop = FakeMaildrop(update_ok=False)

    got = run([LOGIN + b"DELE 1\r\nQUIT\r\n"], maildrop=drop)

    assert got.output.endswith(responses.UPDATE_FAILED.wire)


def test_retr_dot_stuffs_and_terminates() -> None:
    stored = b"Subject: dots\r\n\r\n.leading\r\n..two\r\nmid.dle\r\n.\r\nlast"
    drop = FakeMaildrop(messages=[stored])

    got = run([LOGIN + b"RETR 1\r\n"], maildrop=drop)

    body = got.output.split(b"+OK %d octets\r\n" % len(stored), 1)[1]
    assert body == (
        b"Subject: dots\r\n\r\n..leading\r\n...two\r\nmid.dle\r\n..\r\nlast\r\n.\r\n"
    )


def test_retr_of_a_message_starting_with_a_dot_and_an_empty_one() -> None:
    drop = FakeMaildrop(messages=[b".x\r\n", b""])

    got = run([LOGIN + b"RETR 1\r\nRETR 2\r\n"], maildrop=drop)

    assert lines(got.output)[-5:] == [
        b"+OK 4 octets",
        b"..x",
        b".",
        b"+OK 0 octets",
        b".",
    ]


def test_top_header_and_lines() -> None:
    stored = message(1, body_lines=5)

    assert content.top(stored, 0) == stored[: stored.index(b"\r\n\r\n") + 4]
    assert content.top(stored, 2).endswith(b"line 1 of message 1\r\n")
    assert content.top(stored, 99) == stored
    assert content.top(b"Subject: no body\r\n", 3) == b"Subject: no body\r\n"
    assert content.top(b"\r\nbody\r\nmore\r\n", 1) == b"\r\nbody\r\n"


def _top_line_by_line(stored: bytes, count: int) -> bytes:
    # The plain reading of RFC 1939 §7, for comparison.
    head, blank, body = stored.partition(b"\r\n\r\n")
    if stored.startswith(b"\r\n"):
        head, blank, body = b"", b"\r\n", stored[2:]
    elif not blank:
        return stored
    kept = body.splitlines(keepends=True)[:count]
    return head + blank + b"".join(kept)


@pytest.mark.parametrize("block", [1, 2, 3, 7, 64, 1 << 16])
def test_top_counts_lines_across_blocks(
    block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # top() skips whole blocks of the body with count(); the answer
    # must not depend on where a block boundary falls.
    monkeypatch.setattr(content, "_TOP_BLOCK", block)
    stored = b"Subject: x\r\n\r\n" + b"".join(
        b"%d\r\n" % n + b"\r\n" * (n % 3) for n in range(40)
    )
    for count in (0, 1, 2, 5, 17, 60, 61, 62, 1000):
        assert content.top(stored, count) == _top_line_by_line(stored, count)


def test_top_of_a_huge_line_count_is_cheap() -> None:
    # TOP n 999999999 of 2 million empty lines: the answer is the whole
    # message, found with a few hundred count() calls, not 2 million
    # find() calls on the event loop (regression: seconds per TOP).
    stored = b"Subject: x\r\n\r\n" + b"\r\n" * 2_000_000
    calls = 0

    class Counting(bytes):
        def find(self, *args: Any) -> int:
            nonlocal calls
            calls += 1
            return bytes.find(self, *args)

        def index(self, *args: Any) -> int:
            nonlocal calls
            calls += 1
            return bytes.index(self, *args)

    assert content.top(Counting(stored), 999_999_999) == stored
    assert calls < 10
    assert content.top(Counting(stored), 1_999_999) == stored[:-2]


def test_retr_of_a_vanished_message() -> None:
    drop = FakeMaildrop(gone={1})

    out = after_login(b"RETR 1\r\nNOOP\r\n", maildrop=drop)

    assert out == [responses.MESSAGE_GONE.wire.rstrip(), b"+OK"]


# -- Limits and bad input -----------------------------------------------------------


def test_long_line_is_dropped_and_answered() -> None:
    long_line = b"NOOP " + b"x" * COMMAND_LINE_LIMIT + b"\r\n"

    out = after_login(long_line + b"NOOP\r\n")

    assert out == [responses.LINE_TOO_LONG.wire.rstrip(), b"+OK"]


def test_line_of_exactly_the_limit_is_read() -> None:
    # 255 octets including CRLF (RFC 2449 §4).
    line = b"USER " + b"a" * (COMMAND_LINE_LIMIT - 7) + b"\r\n"
    assert len(line) == COMMAND_LINE_LIMIT

    got = run([line, line + b"x\r\n"])

    assert statuses(got.output)[0] == b"+OK send PASS"
    assert statuses(got.output)[1] == b"+OK send PASS"


def test_garbage_is_answered_never_raised() -> None:
    junk = b"\xff\xfe\r\n\0\r\nUSER \0\r\n\r\n \r\nRETR\r\n"

    got = run([junk + b"CAPA\r\n"])

    assert statuses(got.output)[-1] == responses.CAPABILITIES.wire.rstrip()


def test_too_many_errors_closes() -> None:
    got = run([b"BOGUS\r\n" * (HARD_ERROR_LIMIT + 5)])

    assert statuses(got.output)[-1] == responses.TOO_MANY_ERRORS.wire.rstrip()
    assert len(statuses(got.output)) == HARD_ERROR_LIMIT
    assert got.closed


def test_bare_lf_ends_a_line() -> None:
    got = run([f"USER {ALICE}\nPASS {PASSWORD}\nSTAT\n".encode()])

    assert statuses(got.output)[-1] == b"+OK 2 222"


# -- The driver contract -------------------------------------------------------------


def test_core_pauses_until_answered_and_checks_the_answer() -> None:
    core = ServerConnection(Options(plaintext_allowed=True))
    core.greet()
    core.receive_data(LOGIN + b"STAT\r\n")

    assert core.next_event() == events.Login(ALICE, PASSWORD, "USER")
    assert core.next_event() is PAUSED
    with pytest.raises(LocalProtocolError):
        core.send_message(b"x")
    core.accept_login([], username="Alice@postroom.test")
    assert core.state is State.TRANSACTION and core.username == "Alice@postroom.test"
    assert core.next_event() is NEED_DATA
    assert core.data_to_send().endswith(b"+OK 0 0\r\n")


def test_close_says_its_response_once() -> None:
    core = ServerConnection()
    core.greet()
    core.data_to_send()

    core.close(responses.SHUTTING_DOWN)
    core.close(responses.SHUTTING_DOWN)

    assert core.data_to_send() == responses.SHUTTING_DOWN.wire
    assert isinstance(core.next_event(), events.Closed)


def test_greeting_refusal_closes() -> None:
    core = ServerConnection()
    core.greet(responses.TOO_MANY_CONNECTIONS)
    core.receive_data(b"CAPA\r\n")

    assert core.data_to_send() == (
        b"-ERR [SYS/TEMP] too many connections; try again later\r\n"
    )
    assert isinstance(core.next_event(), events.Closed)


# -- Input split at every byte boundary ----------------------------------------------
#
# Reading must not depend on how TCP cuts the stream: each conversation
# fed whole, one byte at a time and in two pieces at every position,
# gives the same output and the same events.

CONVERSATIONS = {
    "full-session": LOGIN
    + b"CAPA\r\nSTAT\r\nLIST\r\nUIDL 2\r\nTOP 1 1\r\nRETR 2\r\nDELE 1\r\n"
    + b"RSET\r\nDELE 2\r\nNOOP\r\nQUIT\r\n",
    "sasl": b"AUTH PLAIN\r\n*\r\nAUTH LOGIN\r\n"
    + base64.b64encode(ALICE.encode())
    + b"\r\n"
    + base64.b64encode(PASSWORD.encode())
    + b"\r\nLIST\r\n",
    "long-and-bad-lines": b"NOOP "
    + b"x" * 400
    + b"\r\nUSER "
    + b"y" * 249
    + b"\r\n\xff\r\n"
    + LOGIN
    + b"RETR 99\r\nTOP 1 x\nQUIT\r\n",
}


def _split_runs(data: bytes, options: Options) -> list[tuple[int, object]]:
    whole = run([data], Options(**vars(options)))
    diffs: list[tuple[int, object]] = []
    for cut in range(1, len(data)):
        split = run([data[:cut], data[cut:]], Options(**vars(options)))
        if split != whole:
            diffs.append((cut, split))
    pieces = [data[i : i + 1] for i in range(len(data))]
    one_by_one = run(pieces, Options(**vars(options)))
    if one_by_one != whole:
        diffs.append((-1, one_by_one))
    return diffs


# STLS is left out: the fake finishes the handshake at once, so bytes
# cut off after STLS arrive "after TLS", as a real client's would.
@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_every_split_equals_whole(name: str) -> None:
    assert _split_runs(CONVERSATIONS[name], Options(plaintext_allowed=True)) == []


def test_lf_only_files_go_out_with_crlf() -> None:
    from postroom.protocol.pop3.content import crlf

    assert crlf(b"a\nb\r\n.c\n") == b"a\r\nb\r\n.c\r\n"
    stored = b"Subject: x\r\n\r\nbody\r\n"
    assert crlf(stored) is stored
    assert crlf(b"no line end") == b"no line end"
