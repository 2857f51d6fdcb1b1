"""POP3 transcripts (``tests/transcripts/pop3/*.txt``) replayed against
the sans-I/O core and against the asyncio server.

A transcript is ``C:`` lines (what the client sends), ``S:`` lines
(what the server must answer, exactly) and ``#`` comments. Both sides
hold the same two messages (``postroom.testing.pop3.message``); UIDL
ids depend on the store's UIDVALIDITY, written ``{uidvalidity}``.

The server replay sends one command at a time and reads the answer
before the next, as a cautious client would; the core replay feeds the
whole conversation at once, as a pipelining one would. Both must give
the same bytes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from postroom.config import Config, Listener
from postroom.mailbox.store import MailStore
from postroom.server.pop3d import Pop3Server
from postroom.testing.pop3 import ALICE, PASSWORD, FakeMaildrop, run

TRANSCRIPT_DIR = Path(__file__).parent.parent / "transcripts" / "pop3"
TRANSCRIPTS = sorted(TRANSCRIPT_DIR.glob("*.txt"))
FAKE_UIDVALIDITY = 7  # what FakeMaildrop's unique ids start with


@dataclass
class Transcript:
    # Each client line with the server lines that answer it; the first
    # item answers nothing (the greeting).
    steps: list[tuple[bytes | None, list[bytes]]]

    @classmethod
    def load(cls, path: Path) -> Transcript:
        steps: list[tuple[bytes | None, list[bytes]]] = [(None, [])]
        for raw in path.read_text().splitlines():
            if raw.startswith("#") or not raw.strip():
                continue
            kind, text = raw[:2], raw[3:]
            if kind == "C:":
                steps.append((text.encode() + b"\r\n", []))
            elif kind == "S:":
                steps[-1][1].append(text.encode())
            else:
                raise ValueError(f"{path.name}: bad line {raw!r}")
        return cls(steps)

    def client_bytes(self) -> bytes:
        return b"".join(line for line, _ in self.steps if line)

    def server_bytes(self, uidvalidity: int) -> bytes:
        lines = [line for _, answer in self.steps for line in answer]
        text = b"".join(line + b"\r\n" for line in lines)
        return text.replace(b"{uidvalidity}", str(uidvalidity).encode())


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=lambda p: p.stem)
def test_core_replay(path: Path) -> None:
    transcript = Transcript.load(path)

    got = run([transcript.client_bytes()], maildrop=FakeMaildrop())

    assert got.output == transcript.server_bytes(FAKE_UIDVALIDITY)


class OnePassword:
    async def verify(self, username: str, password: str) -> bool:
        return username.lower() == ALICE and password == PASSWORD


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[Pop3Server, int]]:
    store = MailStore(tmp_path / "mailboxes", fsync=False)
    with store.open(ALICE) as inbox:
        for data in FakeMaildrop().messages:
            inbox.append(data)
        uidvalidity = inbox.uidvalidity
    config = Config()
    config.pop3.listeners = [Listener("pop3", "127.0.0.1", 0)]
    config.pop3.auth_failure_delay = 0.01
    pop3 = Pop3Server(config, store, OnePassword())  # type: ignore[arg-type]
    await pop3.start()
    yield pop3, uidvalidity
    await pop3.stop()


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=lambda p: p.stem)
async def test_server_replay(server: tuple[Pop3Server, int], path: Path) -> None:
    pop3, uidvalidity = server
    transcript = Transcript.load(path)
    expected = transcript.server_bytes(uidvalidity)
    reader, writer = await asyncio.open_connection("127.0.0.1", pop3.bound_ports[0])

    got = b""
    for line, answer in transcript.steps:
        if line is not None:
            writer.write(line)
        for _ in answer:
            got += await asyncio.wait_for(reader.readline(), 5.0)
    writer.close()

    assert got == expected
