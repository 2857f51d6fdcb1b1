"""Replay every IMAP transcript against the core, whole and split.

The core's output must not depend on how the input was cut: each
transcript is fed in one piece, one byte at a time, and in two pieces
split at every byte boundary, and must produce the recorded output each
time. STARTTLS is the one command whose effect depends on timing (what
was pipelined after it is dropped), so no transcript contains it; see
``test_imap_connection.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from imap_fakes import Transcript, lines_of, load_transcripts, matches

TRANSCRIPTS = load_transcripts(Path(__file__).parent / "transcripts")


def run(transcript: Transcript, chunks: list[bytes]) -> list[str]:
    driver = transcript.driver()
    for chunk in chunks:
        driver.send(chunk)
    driver.eof()
    return lines_of(bytes(driver.output))


def check(transcript: Transcript, actual: list[str]) -> None:
    expected = transcript.expected_lines()
    if not matches(expected, actual):
        diff = "\n".join(f"  {a}" for a in actual)
        pytest.fail(f"{transcript.name}: output differs; got:\n{diff}")


@pytest.mark.parametrize("transcript", TRANSCRIPTS, ids=lambda t: t.name)
def test_whole(transcript: Transcript) -> None:
    check(transcript, run(transcript, [transcript.client]))


@pytest.mark.parametrize("transcript", TRANSCRIPTS, ids=lambda t: t.name)
def test_byte_at_a_time(transcript: Transcript) -> None:
    data = transcript.client
    check(transcript, run(transcript, [data[i : i + 1] for i in range(len(data))]))


@pytest.mark.parametrize("transcript", TRANSCRIPTS, ids=lambda t: t.name)
def test_every_split(transcript: Transcript) -> None:
    data = transcript.client
    expected = run(transcript, [data])
    for i in range(1, len(data)):
        assert run(transcript, [data[:i], data[i:]]) == expected, f"split at {i}"


def test_transcripts_exist() -> None:
    assert {t.name for t in TRANSCRIPTS} >= {
        "session",
        "literals",
        "states",
        "authenticate",
        "mailboxes",
        "copymove",
        "idle",
    }
