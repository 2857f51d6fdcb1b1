"""aiosmtpd on uvloop, storing each message durably before its 250.

The baseline "a Python SMTP server done the obvious way": aiosmtpd's
protocol class on uvloop, with a handler that writes every message to a
file of its own in a spool directory and answers 250 only once the file
and the directory entry are on disk (write, fsync the file, fsync the
directory), as a durable queue must.

The blocking file work runs in the loop's default thread pool, so other
sessions keep talking while one waits for the disk and concurrent
fsyncs can share a journal commit. That is the stronger of the two
plain designs; ``--fsync-in loop`` does it on the event loop instead,
to compare.

Run: ``python -m bench.aiosmtpd_durable --port 2526 --spool DIR``.
Stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
from pathlib import Path

import uvloop
from aiosmtpd.smtp import SMTP, Envelope, Session

HOSTNAME = "bench.test"


class DurableSpool:
    """One file per message: envelope lines, a blank line, the message.

    The file is written under a temporary name and renamed, so that a
    crash leaves either a whole message or a ``.tmp`` file to discard.
    """

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        self._serial = itertools.count()

    def store(self, sender: str, recipients: list[str], data: bytes) -> str:
        name = f"{os.getpid()}.{next(self._serial)}"
        envelope = "".join(
            [f"from {sender}\n", *(f"to {rcpt}\n" for rcpt in recipients),
             "\n"]).encode("utf-8", "surrogateescape")

        temporary = self.directory / f"{name}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.writev(fd, [envelope, data])
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temporary, self.directory / name)
        # The rename (the new directory entry) is durable only once the
        # directory itself is synced.
        os.fsync(self._dir_fd)
        return name


class DurableHandler:
    """aiosmtpd handler: 250 after the message is on disk."""

    def __init__(self, spool: DurableSpool, in_thread: bool) -> None:
        self.spool = spool
        self.in_thread = in_thread

    async def handle_DATA(self, server: SMTP, session: Session,
                          envelope: Envelope) -> str:
        data = envelope.original_content or b""
        args = (envelope.mail_from or "", list(envelope.rcpt_tos), data)
        if self.in_thread:
            loop = asyncio.get_running_loop()
            name = await loop.run_in_executor(None, self.spool.store, *args)
        else:
            name = self.spool.store(*args)
        return f"250 2.0.0 Ok: queued as {name}"


async def serve(port: int, spool_dir: Path, in_thread: bool) -> None:
    loop = asyncio.get_running_loop()
    handler = DurableHandler(DurableSpool(spool_dir), in_thread)

    def protocol() -> SMTP:
        # An explicit hostname: otherwise aiosmtpd asks getfqdn(), a
        # name lookup we do not want from a benchmark.
        return SMTP(handler, hostname=HOSTNAME, loop=loop)

    server = await loop.create_server(protocol, "127.0.0.1", port,
                                      backlog=1024)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--spool", type=Path, required=True)
    parser.add_argument("--fsync-in", choices=("thread", "loop"),
                        default="thread",
                        help="where the blocking write+fsync runs")
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.spool, args.fsync_in == "thread"))


if __name__ == "__main__":
    main()
