"""Every transcript in tests/transcripts, replayed against the sans-I/O core
and against the real asyncio server on 127.0.0.1 (with a FakeSpool), in
the spirit of Postfix's .in/.ref golden files. Both must say exactly
what the transcript says; the server must also have stored what the
core handed over, behind its Received header.

To add a case, drop a ``.txt`` file next to the others; the format is
described in ``postroom.testing.smtp``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from postroom.protocol.smtp import events
from postroom.testing.smtp import (
    FakeAuthenticator,
    FakeSpool,
    Transcript,
    TranscriptMismatch,
    load_transcripts,
    make_config,
    replay_core,
    replay_server,
    running_server,
    unescape,
)

TRANSCRIPTS = load_transcripts(Path(__file__).parent.parent / "transcripts")
IDS = [t.name for t in TRANSCRIPTS]


def strip_received(content: bytes) -> bytes:
    """*content* without the Received header the server put on top."""
    assert content.startswith(b"Received: ")
    lines = content.split(b"\r\n")
    end = 1
    while lines[end].startswith(b"\t"):
        end += 1
    return b"\r\n".join(lines[end:])


def test_there_are_transcripts() -> None:
    assert len(TRANSCRIPTS) >= 12


@pytest.mark.parametrize("transcript", TRANSCRIPTS, ids=IDS)
def test_transcript_against_core(transcript: Transcript) -> None:
    replay = replay_core(transcript)

    transcript.check(replay.lines, replay.closed)


@pytest.mark.parametrize("transcript", TRANSCRIPTS, ids=IDS)
async def test_transcript_against_server(
    transcript: Transcript, tmp_path: Path
) -> None:
    config = make_config(tmp_path, **transcript.config_settings())
    spool = FakeSpool()
    authenticator = FakeAuthenticator() if transcript.options.get("auth") else None

    async with running_server(config, spool, authenticator=authenticator) as server:
        replay = await replay_server(transcript, server.bound_ports[0])

    transcript.check(replay.lines, replay.closed)

    # The server stored what the core accepted, in the same order.
    core = replay_core(transcript)
    accepted = [e for e in core.events if isinstance(e, events.Message)]
    assert [strip_received(c) for c in spool.contents] == [m.content for m in accepted]
    for (envelope, _), event in zip(spool.commits, accepted, strict=True):
        assert envelope.sender == str(event.sender)
        assert [r.address for r in envelope.recipients] == [
            str(addr) for addr, _ in event.recipients
        ]


# -- the format itself ---------------------------------------------------------

SAMPLE = """\
# a comment
O: max_recipients=3
O: auth=true
S: 220 *
C: EHLO a.example
C+ BDAT 2\\r\\nhi
S: 250-a
S:
X: closed
"""


def test_parse() -> None:
    t = Transcript.parse(SAMPLE, "sample")

    assert t.options == {"max_recipients": 3, "auth": True}
    assert t.client_bytes == b"EHLO a.example\r\nBDAT 2\r\nhi"
    assert t.exchanges() == [(b"", 1), (b"EHLO a.example\r\nBDAT 2\r\nhi", 2)]
    assert t.expects_close
    assert t.core_options().max_recipients == 3
    assert t.core_options().auth_enabled
    assert t.config_settings() == {"max_recipients": 3}


@pytest.mark.parametrize(
    "text, data",
    [
        ("a\\r\\nb", b"a\r\nb"),
        ("\\0\\t\\\\", b"\0\t\\"),
        ("\\x00\\xFF\\x0a", b"\0\xff\n"),
        ("é", "é".encode()),
    ],
)
def test_unescape(text: str, data: bytes) -> None:
    assert unescape(text) == data


@pytest.mark.parametrize(
    "text",
    ["C: \\q", "Q: what", "O: colour=blue", "O: auth=maybe", "O: max_recipients=x"],
)
def test_parse_errors_name_the_line(text: str) -> None:
    with pytest.raises(ValueError, match=r"bad\.txt:2: "):
        Transcript.parse("# first\n" + text, "bad.txt")


def test_glob_only_at_the_end() -> None:
    t = Transcript.parse("S: 250 2.0.0 Ok: queued as *\nS: 2*0 x\n")

    t.check(["250 2.0.0 Ok: queued as 0QK4W7ZJ2PM3B", "2*0 x"], None)
    with pytest.raises(TranscriptMismatch):
        t.check(["250 2.0.0 Ok: queued as X", "250 x"], None)


@pytest.mark.parametrize(
    "lines, closed",
    [
        (["220 x"], True),
        (["220 x", "250 extra"], False),
        ([], False),
        (["220 y"], False),
    ],
    ids=["not-closed", "extra-line", "missing-line", "wrong-line"],
)
def test_check_reports_mismatches(lines: list[str], closed: bool) -> None:
    t = Transcript.parse("S: 220 x\n", "t.txt")

    with pytest.raises(TranscriptMismatch, match=r"t\.txt"):
        t.check(lines, closed)
