"""Recovery: mend a spool's journal and its queue rows after a stop.

Theory of operation
-------------------

The journal is the source of truth; the queue rows are its index. Any
stop, clean or not, may leave the two disagreeing in a few known ways,
and ``recover()`` scans every segment of one locked spool to put them
back in step before the spool takes new mail:

- A torn tail (a batch cut short by a crash) is cut off. Only the last
  batch written can be torn, each batch being fsync'd before the next
  is written, and none of its messages was answered 250. If a row
  points into the unreadable part, it is corruption, not a tear, and
  the segment is left as it is and not appended to.
- A record without a row is re-inserted: SQLite runs
  ``synchronous=NORMAL``, so a power loss may take its last
  transactions while the fsync'd journal survives. A record whose
  queue id another row holds already is skipped and logged.
- A live row whose segment file has gone is dropped: its content is
  lost for good, and the log says so.
- A row whose record cannot be read is held for a human.
- Finally, garbage is collected (``SpoolDirectory.collect_garbage``).

``recover()`` is blocking and runs before the spool serves, on a thread
(``Spool.start`` uses ``asyncio.to_thread``), with the directory's
maintenance connection. ``recover_all()`` runs it on every spool under
a spool directory that no process owns, for the server's parent
process.

Every query a spool makes about its own rows is filtered by its name:
several spools share one database, each numbering its segments from 1.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from postroom import logs
from postroom.errors import SpoolError
from postroom.queue import journal
from postroom.queue.directory import SpoolDirectory
from postroom.queue.envelope import Envelope
from postroom.store import queue as tables

log = logging.getLogger(__name__)

# Rows per IN (...) list: under SQLite's default limit of 999 variables.
_CHUNK = 500


@dataclass
class RecoveryReport:
    """What the recovery scan at ``Spool.start()`` (or ``recover_all``)
    found and did, in one spool."""

    segments: int = 0  # segment files scanned
    records: int = 0  # valid records in them
    reinserted: int = 0  # records whose lost queue rows were re-created
    truncated: int = 0  # segments whose torn tail was cut off
    truncated_bytes: int = 0
    corrupt: int = 0  # bad records skipped, plus messages held as unreadable
    dropped: int = 0  # live queue rows whose segment file was gone
    collected: int = 0  # fully removed segment files unlinked


@dataclass
class Recovered:
    """The outcome of ``recover()``: its report, and where the spool
    goes on appending."""

    report: RecoveryReport
    next_segment: int  # the number the next new segment gets
    # The last segment and its size, when the spool may append to it.
    active: tuple[int, int] | None


def recover(
    directory: SpoolDirectory, *, segment_size: int, keep_active: bool
) -> Recovered:
    """Scan and mend the locked spool *directory* (module docstring).

    With *keep_active*, the last segment stays out of garbage collection
    and is returned as ``active`` if it can take more records (it is
    appendable and smaller than *segment_size*); without, even the last
    segment is collected once its messages are all removed.

    Raises what the database or the file system raise.
    """
    # XXX: every start reads and checksums every record of every
    # segment, so it takes time in proportion to the spool (about
    # 2 s per GB from the page cache, measured). That is acceptable
    # while segments are collected as soon as their messages are
    # gone; a per-segment "sealed and verified" mark would bound it
    # to the active segment.
    scanner = _Scanner(directory)
    report = scanner.report
    on_disk = directory.segments()
    messages = tables.messages
    with directory.db.transaction() as conn:
        in_db = set(
            conn.execute(
                sa.select(messages.c.segment)
                .distinct()
                .where(messages.c.spool == directory.name)
            ).scalars()
        )

    # Rows whose segment is gone: their content is lost for good.
    # XXX: "gone" is judged by this host's disk, so two spools of
    # the same name on one database (two nodes configured alike)
    # would drop each other's rows here. Nothing enforces unique
    # names across hosts, because the flock only spans one host; a
    # lease row per spool in the database would, and belongs with
    # cluster mode.
    for segment in sorted(in_db - set(on_disk)):
        report.dropped += scanner.drop_rows(segment)

    # Scan every segment; only the last one may become active again.
    appendable = False
    for segment in on_disk:
        appendable = scanner.scan(segment)
    active = None
    if keep_active and on_disk and appendable:
        last = on_disk[-1]
        size = (directory.journal_dir / journal.segment_name(last)).stat().st_size
        if size < segment_size:
            active = (last, size)

    report.collected = directory.collect_garbage(active[0] if active else None)
    log.info(
        logs.event(
            "recovered",
            spool=directory.name,
            segments=report.segments,
            records=report.records,
            reinserted=report.reinserted,
            truncated=report.truncated,
            corrupt=report.corrupt,
            dropped=report.dropped,
            collected=report.collected,
        )
    )
    next_segment = max([*on_disk, *in_db], default=0) + 1
    return Recovered(report, next_segment, active)


async def recover_all(
    spool_dir: Path, engine: sa.Engine, *, fsync: bool = True
) -> dict[str, RecoveryReport]:
    """Recover every spool under *spool_dir* that no process owns.

    For the server's parent process, before it starts its workers: a
    spool whose worker is gone (fewer workers after a restart, or a
    different name scheme) would otherwise never be recovered, and its
    removed messages never collected. Each spool (see
    ``journal.spool_names``) is locked, recovered and garbage-collected
    in turn, then released; unlike at ``Spool.start()`` no segment is
    kept active, so a spool whose messages are all removed ends with no
    segment at all.

    Returns a report per spool recovered. A spool another process owns
    is skipped with a warning: it has a live owner to recover it. Raises
    what ``Spool.start()`` raises when a spool cannot be opened or
    recovered; the spools before it are recovered by then, the ones
    after it are not.

    XXX: only spools with a directory here are found, because in
    cluster mode the database also holds other nodes' spools, which are
    none of this node's business. Rows of a spool whose whole directory
    was deleted stay until an operator deletes them (``queue delete``);
    their content cannot be read.

    XXX: a spool emptied here keeps its directory (``spool.lock`` and an
    empty ``journal/``) for good, because unlinking a lock file that
    another process may just have opened would let two processes each
    hold "the" lock; two inodes per retired worker are cheap.
    """
    reports: dict[str, RecoveryReport] = {}
    for name in journal.spool_names(spool_dir):
        directory = SpoolDirectory(spool_dir, engine, name, fsync=fsync)
        report = await asyncio.to_thread(_recover_idle, directory)
        if report is not None:
            reports[name] = report
    return reports


def _recover_idle(directory: SpoolDirectory) -> RecoveryReport | None:
    """Lock, recover and release; None, having done nothing, if another
    process owns the spool."""
    try:
        owner = directory.lock()
        if owner is not None:
            log.warning(
                logs.event(
                    "recovered",
                    spool=directory.name,
                    action="skip",
                    reason=f"in use by pid {owner}",
                )
            )
            return None
        # No segment size applies: nothing is kept active.
        return recover(directory, segment_size=0, keep_active=False).report
    finally:
        directory.release()


class _Scanner:
    """The per-segment steps of ``recover()``, on one spool."""

    def __init__(self, directory: SpoolDirectory) -> None:
        self.directory = directory
        self.name = directory.name
        self.report = RecoveryReport()

    def scan(self, segment: int) -> bool:
        """Scan one segment, mend it and its rows; True if appendable."""
        report = self.report
        messages = tables.messages
        name = journal.segment_name(segment)
        path = self.directory.journal_dir / name
        with self.directory.db.transaction() as conn:
            rows = conn.execute(
                sa.select(
                    messages.c.queue_id,
                    messages.c.offset,
                    messages.c.length,
                    messages.c.state,
                ).where(messages.c.spool == self.name, messages.c.segment == segment)
            ).all()
        known = {(r.offset, r.length) for r in rows}
        scan = journal.scan_segment(path, {offset for offset, _ in known})
        report.segments += 1
        report.records += len(scan.records)
        for offset in scan.corrupt:
            report.corrupt += 1
            self.skip(log.error, name, offset, "bad checksum")

        # Rows that point at no valid record: hold them for a human.
        for row in rows:
            if (row.offset, row.length) in scan.records:
                continue
            try:
                journal.read_record(
                    self.directory.spool_dir,
                    self.name,
                    segment,
                    row.offset,
                    row.length,
                )
            except SpoolError as e:
                if row.state != tables.REMOVED:
                    report.corrupt += 1
                    self.hold(row.queue_id, str(e))

        # Lost rows: the journal is the source of truth.
        report.reinserted += self.reinsert(segment, scan.unknown)

        # A torn tail was never answered 250; cut it off, unless a row
        # points into it, which would make it corruption, not a tear.
        if scan.end == scan.size:
            return True
        if any(offset >= scan.end for offset, _ in known):
            log.error(
                logs.event(
                    "recovered",
                    action="keep",
                    spool=self.name,
                    segment=name,
                    offset=scan.end,
                    reason="unreadable data before queued records",
                )
            )
            return False
        self.truncate(path, scan.end)
        report.truncated += 1
        report.truncated_bytes += scan.size - scan.end
        log.warning(
            logs.event(
                "recovered",
                action="truncate",
                spool=self.name,
                segment=name,
                offset=scan.end,
                discarded=scan.size - scan.end,
            )
        )
        return True

    def reinsert(self, segment: int, unknown: Sequence[tuple[int, int, bytes]]) -> int:
        name = journal.segment_name(segment)
        found: list[tuple[Envelope, bytes, int, int]] = []
        for offset, length, env_json in unknown:
            try:
                envelope = Envelope.from_json(env_json)
            except (ValueError, TypeError, KeyError) as e:
                self.skip(log.error, name, offset, f"bad envelope: {e}")
                continue
            found.append((envelope, env_json, offset, length))
        if not found:
            return 0

        taken = self.existing_ids([f[0].queue_id for f in found])
        rows: list[tuple[Envelope, bytes, int, int, int]] = []
        seen: set[str] = set()
        for envelope, env_json, offset, length in found:
            queue_id = envelope.queue_id
            if queue_id in taken or queue_id in seen:
                self.skip(log.warning, name, offset, "duplicate queue id", queue_id)
                continue
            seen.add(queue_id)
            size = length - journal.HEADER_SIZE - len(env_json)
            rows.append((envelope, env_json, size, offset, length))
        with self.directory.db.transaction() as conn:
            tables.insert_messages(conn, self.name, segment, rows)
        for envelope, _, size, offset, _ in rows:
            log.info(
                logs.event(
                    "recovered",
                    envelope.queue_id,
                    spool=self.name,
                    segment=name,
                    offset=offset,
                    size=size,
                    nrcpt=len(envelope.recipients),
                )
            )
        return len(rows)

    def skip(
        self,
        emit: Callable[[str], None],
        segment: str,
        offset: int,
        reason: str,
        queue_id: str | None = None,
    ) -> None:
        """Log one record that recovery passes over, and why."""
        emit(
            logs.event(
                "recovered",
                queue_id,
                action="skip",
                spool=self.name,
                segment=segment,
                offset=offset,
                reason=reason,
            )
        )

    def existing_ids(self, queue_ids: Sequence[str]) -> set[str]:
        # Deliberately not filtered by spool: queue_id is the key of the
        # whole table, so an id another spool's row holds cannot be
        # inserted here either, and trying would fail the whole start.
        # Only reading other spools' rows, this never changes them.
        column = tables.messages.c.queue_id
        taken: set[str] = set()
        with self.directory.db.transaction() as conn:
            for i in range(0, len(queue_ids), _CHUNK):
                chunk = queue_ids[i : i + _CHUNK]
                taken.update(
                    conn.execute(sa.select(column).where(column.in_(chunk))).scalars()
                )
        return taken

    def drop_rows(self, segment: int) -> int:
        messages = tables.messages
        with self.directory.db.transaction() as conn:
            live = (
                conn.execute(
                    sa.select(messages.c.queue_id).where(
                        messages.c.spool == self.name,
                        messages.c.segment == segment,
                        messages.c.state != tables.REMOVED,
                    )
                )
                .scalars()
                .all()
            )
            tables.delete_segments(conn, self.name, [segment])
        for queue_id in live:
            log.warning(
                logs.event(
                    "removed",
                    queue_id,
                    reason="segment file missing",
                    spool=self.name,
                    segment=journal.segment_name(segment),
                )
            )
        return len(live)

    def hold(self, queue_id: str, reason: str) -> None:
        messages = tables.messages
        with self.directory.db.transaction() as conn:
            conn.execute(
                messages.update()
                .where(messages.c.queue_id == queue_id, messages.c.spool == self.name)
                .values(state=tables.HELD)
            )
        log.error(logs.event("held", queue_id, reason=reason))

    def truncate(self, path: Path, size: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            if self.directory.fsync:
                os.fsync(fd)
                self.directory.fsync_count += 1
        finally:
            os.close(fd)
