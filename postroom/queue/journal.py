"""The journal: how a spool's messages are laid out on disk.

Theory of operation
-------------------

A spool named ``<name>`` lives in ``<spool_dir>/<name>/``; its
``journal/`` holds append-only segment files ``00000001.seg``,
``00000002.seg``, ... Each accepted message is one record in one
segment::

    offset  size  field
         0     4  magic b"PRj1" (the last byte is the format version)
         4     4  envelope length E  (big-endian unsigned)
         8     4  content length C
        12     4  crc32 of envelope + content
        16     4  crc32 of bytes 0..15 (so lengths are trusted before use)
        20     E  Envelope.to_json()
      20+E     C  message content, as received

Records are written back to back, a whole batch of them at once, at
explicit offsets (``write_all``), and never changed afterwards. The
header has a checksum of its own, so a scan can trust a record's
lengths before it reads the payload and step over a damaged payload to
the record after it (``scan_segment``).

This module is the format and nothing else: no database, no lock, no
event loop. Reading (``read_record``) is safe from any thread or
process, also while another process owns the spool and appends to it:
a record is only ever read once its queue row exists, and the row is
only written once the record is on disk.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from postroom.errors import SpoolCorrupt, SpoolError

MAGIC = b"PRj1"
_HEADER = struct.Struct(">4sIII")
_HEADER_CRC = struct.Struct(">I")
_HEADER_ALL = struct.Struct(">4sIIII")
HEADER_SIZE = _HEADER_ALL.size
MAX_PART = 0xFFFFFFFF  # the largest envelope or content a header can hold
_SEGMENT_NAME = re.compile(r"^(\d{8})\.seg$")
# A spool's name is a directory name and a database value (String(32)):
# lower case so that no two names share a directory on a case-folding
# file system, no "." or "/" so that it can only name a child of
# spool_dir, and no leading "-" so that it never reads as an option.
_SPOOL_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
DEFAULT_NAME = "main"
# Buffers per pwritev call: Linux's IOV_MAX.
_IOV_MAX = 1024


# -- Names and paths -----------------------------------------------------


def segment_name(number: int) -> str:
    return f"{number:08d}.seg"


def is_spool_name(name: str) -> bool:
    return _SPOOL_NAME.fullmatch(name) is not None


def check_name(name: str) -> str:
    """Return *name* if it can name a spool, else raise ValueError.

    A spool name is 1 to 32 characters from ``a-z``, ``0-9`` and ``-``,
    not starting with ``-``: ``main``, ``w0``, ``node2-w13``.
    """
    if not isinstance(name, str) or not is_spool_name(name):
        raise ValueError(
            f"bad spool name {name!r}: use 1 to 32 of a-z, 0-9 and '-',"
            " not starting with '-'"
        )
    return name


def segment_path(spool_dir: Path, spool: str, segment: int) -> Path:
    """Where segment *segment* of spool *spool* under *spool_dir* lives."""
    return Path(spool_dir) / spool / "journal" / segment_name(segment)


def spool_names(spool_dir: Path) -> list[str]:
    """The names of the spools under *spool_dir*, sorted: each directory
    with a valid name and a ``journal/`` inside. Other entries are not
    spools and are left alone."""
    try:
        entries = list(os.scandir(spool_dir))
    except FileNotFoundError:
        return []
    return sorted(
        entry.name
        for entry in entries
        if is_spool_name(entry.name)
        and os.path.isdir(os.path.join(entry.path, "journal"))
    )


def segment_numbers(journal_dir: Path) -> list[int]:
    """The numbers of the segment files in *journal_dir*, ascending."""
    numbers = []
    for entry in os.scandir(journal_dir):
        match = _SEGMENT_NAME.match(entry.name)
        if match:
            numbers.append(int(match.group(1)))
    return sorted(numbers)


# -- Records -------------------------------------------------------------


def encode_header(envelope: bytes, content: bytes) -> bytes:
    """The 20-byte record header for *envelope* and *content*."""
    crc = zlib.crc32(content, zlib.crc32(envelope))
    head = _HEADER.pack(MAGIC, len(envelope), len(content), crc)
    return head + _HEADER_CRC.pack(zlib.crc32(head))


def decode_header(buf: bytes | memoryview) -> tuple[int, int, int] | None:
    """``(envelope length, content length, crc)``, or None when *buf*
    does not start with a valid header (wrong magic, bad header crc)."""
    if len(buf) < HEADER_SIZE:
        return None
    magic, env_len, content_len, crc, head_crc = _HEADER_ALL.unpack_from(buf)
    if magic != MAGIC or zlib.crc32(buf[: HEADER_SIZE - 4]) != head_crc:
        return None
    return env_len, content_len, crc


def read_record(
    spool_dir: Path, spool: str, segment: int, offset: int, length: int
) -> tuple[bytes, bytes]:
    """Read one record of spool *spool* back: ``(envelope JSON, content)``.

    Raises SpoolError if the segment file is missing or unreadable and
    SpoolCorrupt if the record is short or fails its checksums, or if
    *spool* (a database value) is not a spool name: it becomes part of
    a path, so it must not be able to point outside *spool_dir*.
    """
    if not is_spool_name(spool):
        raise SpoolCorrupt(f"queue row names a bad spool {spool!r}")
    where = f"{spool}/{segment_name(segment)}:{offset}"
    # os.path, not pathlib: this runs once per message delivered.
    path = os.path.join(spool_dir, spool, "journal", segment_name(segment))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise SpoolError(f"cannot open segment {path}: {e.strerror}") from None
    try:
        raw = os.pread(fd, length, offset)
    except OSError as e:
        raise SpoolError(f"cannot read record {where}: {e.strerror}") from None
    finally:
        os.close(fd)

    header = decode_header(raw)
    if len(raw) < length or header is None:
        raise SpoolCorrupt(f"record {where} is truncated or has a bad header")
    env_len, content_len, crc = header
    if HEADER_SIZE + env_len + content_len != length:
        raise SpoolCorrupt(f"record {where} does not have the expected length")
    payload = memoryview(raw)[HEADER_SIZE:]
    if zlib.crc32(payload) != crc:
        raise SpoolCorrupt(f"record {where} fails its checksum")
    return bytes(payload[:env_len]), bytes(payload[env_len:])


def write_all(fd: int, buffers: Sequence[bytes], offset: int) -> None:
    """Write every byte of *buffers* at *offset*, resuming after short
    writes. Positional, so that cutting a failed batch off with
    ftruncate cannot leave the file position past the end (a hole of
    zeros before the next batch)."""
    views = [memoryview(b) for b in buffers if b]
    i = 0
    while i < len(views):
        written = os.pwritev(fd, views[i : i + _IOV_MAX], offset)
        offset += written
        while written and i < len(views):
            if written >= len(views[i]):
                written -= len(views[i])
                i += 1
            else:
                views[i] = views[i][written:]
                written = 0


# -- Scanning ------------------------------------------------------------


@dataclass
class Scan:
    """One segment's records as ``scan_segment`` found them."""

    size: int
    end: int  # where the valid prefix ends; == size when the tail is clean
    records: set[tuple[int, int]] = field(default_factory=set)
    # Records with no row at their offset: (offset, length, envelope JSON).
    unknown: list[tuple[int, int, bytes]] = field(default_factory=list)
    # Offsets of records whose payload fails its checksum.
    corrupt: list[int] = field(default_factory=list)


def scan_segment(path: Path, known: set[int]) -> Scan:
    """Walk the records of the segment at *path*. *known* holds the
    offsets that queue rows point at; the envelopes of the other
    records are returned in ``Scan.unknown``."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return Scan(size=0, end=0)
        with (
            mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m,
            memoryview(m) as view,
        ):
            return _scan_view(view, size, known)


def _scan_view(view: memoryview, size: int, known: set[int]) -> Scan:
    scan = Scan(size=size, end=size)
    pos = 0
    while pos < size:
        header = decode_header(view[pos : pos + HEADER_SIZE])
        if header is None:
            break
        env_len, content_len, crc = header
        end = pos + HEADER_SIZE + env_len + content_len
        if end > size:
            break
        if zlib.crc32(view[pos + HEADER_SIZE : end]) != crc:
            # Torn writes are at the tail; a bad record followed by good
            # ones is damage we skip over (its length is trustworthy, the
            # header has its own crc).
            if end == size:
                break
            scan.corrupt.append(pos)
            pos = end
            continue
        scan.records.add((pos, end - pos))
        if pos not in known:
            env = bytes(view[pos + HEADER_SIZE : pos + HEADER_SIZE + env_len])
            scan.unknown.append((pos, end - pos, env))
        pos = end
    # XXX: scanning stops at the first unreadable header, so a record
    # without a row that sits after one is not found again. Only bit rot,
    # or a crash with fsync=False, puts a bad header before good records,
    # and rows pointing past it are still read directly and kept.
    scan.end = pos
    return scan
