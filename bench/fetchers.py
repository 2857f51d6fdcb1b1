"""Download clients for the mailbox benchmark: POP3 and IMAP over
asyncio streams, lean enough that the server, not the client, sets the
pace (the same client measures both servers, so what it costs is paid
alike).

Each client logs in with a plain password, waits at *start* (a barrier
shared by the sessions of a run, so that the clock runs from the moment
all have logged in: password hashing is not what is measured, and the
servers hash differently), downloads every message of one mailbox and
returns how many messages and octets it received. They
check what they parse (every reply positive, literal sizes honoured,
the message count what the server announced), so a server that answers
wrongly fails the run instead of looking fast.

Modes, as real clients behave:

pop3        USER/PASS, STAT, then RETR 1..n one at a time (fetchmail).
imap-each   LOGIN, SELECT, then ``FETCH n BODY.PEEK[]`` one message at a
            time (a client that fetches as the user opens messages).
imap-bulk   LOGIN, SELECT, one ``UID FETCH 1:* (UID FLAGS BODY.PEEK[])``
            (offline sync: mbsync, getmail, a desktop client's first
            download).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

LIMIT = 1 << 24
_LITERAL = re.compile(rb"\{(\d+)\}\r\n$")


class FetchError(RuntimeError):
    pass


@dataclass
class Fetched:
    messages: int
    octets: int


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, limit=LIMIT)


# -- POP3 -----------------------------------------------------------------


async def _pop3_line(reader: asyncio.StreamReader) -> bytes:
    line = await reader.readline()
    if not line.startswith(b"+OK"):
        raise FetchError(f"POP3 server said {line[:200]!r}")
    return line


async def fetch_pop3(
    port: int, user: str, password: str, start: asyncio.Barrier
) -> Fetched:
    reader, writer = await _open(port)
    try:
        await _pop3_line(reader)
        writer.write(f"USER {user}\r\n".encode())
        await _pop3_line(reader)
        writer.write(f"PASS {password}\r\n".encode())
        await _pop3_line(reader)
        await start.wait()
        writer.write(b"STAT\r\n")
        count = int((await _pop3_line(reader)).split()[1])
        octets = 0
        for n in range(1, count + 1):
            writer.write(b"RETR %d\r\n" % n)
            await _pop3_line(reader)
            # Dot-stuffed content up to the terminating ".": read in
            # large pieces rather than line by line.
            body = await reader.readuntil(b"\r\n.\r\n")
            octets += len(body) - 3
        writer.write(b"QUIT\r\n")
        await _pop3_line(reader)
        return Fetched(count, octets)
    finally:
        writer.close()


# -- IMAP -----------------------------------------------------------------


class _Imap:
    def __init__(self, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.tag = 0

    async def command(self, text: str) -> tuple[list[bytes], int, int]:
        """Send one command; return its untagged lines (literals left
        out), the number of literals and their total size."""
        self.tag += 1
        tag = b"b%d" % self.tag
        self.writer.write(tag + b" " + text.encode() + b"\r\n")
        lines: list[bytes] = []
        literals = octets = 0
        while True:
            line = await self.reader.readuntil(b"\r\n")
            # A line may carry several literals: read each, then the
            # rest of the line after it.
            while (match := _LITERAL.search(line)) is not None:
                size = int(match.group(1))
                await self.reader.readexactly(size)
                literals += 1
                octets += size
                line = line[: match.start()] + await self.reader.readuntil(b"\r\n")
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise FetchError(f"IMAP {text.split()[0]}: {line[:200]!r}")
                return lines, literals, octets
            lines.append(line)


async def _imap_login(
    port: int, user: str, password: str, start: asyncio.Barrier
) -> tuple[_Imap, int]:
    reader, writer = await _open(port)
    greeting = await reader.readuntil(b"\r\n")
    if not greeting.startswith(b"* OK"):
        writer.close()
        raise FetchError(f"IMAP greeting {greeting[:200]!r}")
    imap = _Imap(reader, writer)
    await imap.command(f'LOGIN "{user}" "{password}"')
    await start.wait()
    lines, _, _ = await imap.command("SELECT INBOX")
    exists = [int(ln.split()[1]) for ln in lines if ln.endswith(b" EXISTS\r\n")]
    if not exists:
        raise FetchError("SELECT gave no EXISTS")
    return imap, exists[-1]


async def fetch_imap_each(
    port: int, user: str, password: str, start: asyncio.Barrier
) -> Fetched:
    imap, count = await _imap_login(port, user, password, start)
    try:
        octets = 0
        for n in range(1, count + 1):
            _, literals, size = await imap.command(f"FETCH {n} BODY.PEEK[]")
            if literals != 1:
                raise FetchError(f"FETCH {n} gave {literals} literals")
            octets += size
        await imap.command("LOGOUT")
        return Fetched(count, octets)
    finally:
        imap.writer.close()


async def fetch_imap_bulk(
    port: int, user: str, password: str, start: asyncio.Barrier
) -> Fetched:
    imap, count = await _imap_login(port, user, password, start)
    try:
        command = "UID FETCH 1:* (UID FLAGS BODY.PEEK[])"
        _, literals, octets = await imap.command(command)
        if literals != count:
            raise FetchError(f"bulk FETCH gave {literals} of {count} messages")
        await imap.command("LOGOUT")
        return Fetched(count, octets)
    finally:
        imap.writer.close()


MODES = {
    "pop3": fetch_pop3,
    "imap-each": fetch_imap_each,
    "imap-bulk": fetch_imap_bulk,
}
