"""The session's view of the selected mailbox: sequence numbers.

RFC 3501 §2.3.1.2: message sequence numbers are per session. They change
only when this session is told of an expunge, so two sessions on one
mailbox may number it differently for a while. ``MailboxView`` keeps
the UID of each sequence number (sorted ascending: UIDs only grow, and
sequence order is UID order) plus what the driver reported and the
session has not yet been told.

News are held until the core may send them (RFC 3501 §7.4.1): EXISTS
and flag changes at the end of any command, EXPUNGE at the end of any
command except FETCH, STORE and SEARCH (their UID forms are fine), and
all of them at once while IDLE. ``flush`` returns the untagged lines.
Expunges go out highest first, so that each number is still right when
the client reads it, and EXISTS counts messages whose EXPUNGE is still
held back: the client has not heard of those yet.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence

from postroom.protocol.imap import responses
from postroom.protocol.imap.syntax import ParseError, SequenceSet


class MailboxView:
    def __init__(
        self, uids: Iterable[int], *, uidvalidity: int, read_only: bool
    ) -> None:
        self.uids = sorted(uids)
        self.uidvalidity = uidvalidity
        self.read_only = read_only
        self._expunged: set[int] = set()
        self._flags: dict[int, Sequence[str]] = {}
        self._exists_changed = False
        self._recent: int | None = None

    @property
    def exists(self) -> int:
        return len(self.uids)

    @property
    def largest_uid(self) -> int:
        return self.uids[-1] if self.uids else 0

    def seq_of(self, uid: int) -> int:
        """The sequence number of *uid*, or 0 if it is not in the view."""
        i = bisect.bisect_left(self.uids, uid)
        return i + 1 if i < len(self.uids) and self.uids[i] == uid else 0

    def resolve(self, seqset: SequenceSet, *, uid: bool) -> list[int]:
        """The UIDs a set names, ascending, without duplicates.

        A UID set names whatever UIDs exist in its ranges. A sequence
        set must name existing messages only (otherwise BAD: RFC 9051 §9,
        the comment on seq-number; "*" in an empty mailbox too)."""
        uids = self.uids
        if uid:
            found: set[int] = set()
            for low, high in seqset.resolve(self.largest_uid):
                i = bisect.bisect_left(uids, low)
                j = bisect.bisect_right(uids, high)
                found.update(uids[i:j])
            return sorted(found)
        n = len(uids)
        ranges = seqset.resolve(n)
        if len(ranges) == 1 and ranges[0][0] >= 1 and ranges[0][1] <= n:
            return uids[ranges[0][0] - 1 : ranges[0][1]]  # The common case.
        picked: set[int] = set()
        for low, high in ranges:
            if low < 1 or high > n:
                raise ParseError("Invalid message sequence number")
            picked.update(range(low, high + 1))
        return [uids[s - 1] for s in sorted(picked)]

    # -- changes ----------------------------------------------------------

    def remove(self, uid: int) -> int:
        """Drop *uid* now (our own EXPUNGE); its former number or 0."""
        seq = self.seq_of(uid)
        if seq:
            del self.uids[seq - 1]
            self._flags.pop(uid, None)
        self._expunged.discard(uid)
        return seq

    def note(
        self,
        added: Sequence[int],
        expunged: Sequence[int],
        flags: Mapping[int, Sequence[str]],
        recent: int | None,
    ) -> None:
        """Record news from the driver until ``flush``."""
        last = self.largest_uid
        new = [u for u in added if u > last]
        if new:
            self.uids.extend(sorted(set(new)))
            self._exists_changed = True
        self._expunged.update(expunged)
        self._flags.update(flags)
        if recent is not None:
            self._recent = recent

    def flush(self, *, expunges: bool) -> list[bytes]:
        """Untagged responses for the news that may be sent now."""
        out: list[bytes] = []
        if expunges and self._expunged:
            for uid in sorted(self._expunged, reverse=True):
                seq = self.seq_of(uid)
                if seq:
                    del self.uids[seq - 1]
                    self._flags.pop(uid, None)
                    out.append(b"* %d EXPUNGE\r\n" % seq)
            self._expunged.clear()
        if self._exists_changed:
            out.append(b"* %d EXISTS\r\n" % len(self.uids))
            self._exists_changed = False
        if self._recent is not None:
            out.append(b"* %d RECENT\r\n" % self._recent)
            self._recent = None
        for uid, flags in sorted(self._flags.items()):
            seq = self.seq_of(uid)
            if seq:
                out.append(
                    b"* %d FETCH (UID %d FLAGS %s)\r\n"
                    % (seq, uid, responses.flag_list(flags))
                )
        self._flags.clear()
        return out
