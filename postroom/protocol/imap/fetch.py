"""Rendering FETCH responses (RFC 3501 §7.4.2).

``render`` makes one ``* n FETCH (...)`` response as a list of chunks:
small ``bytes`` pieces around the big literals, which are ``memoryview``
slices of the stored message. A driver that writes with ``writelines``
sends a body without the core ever copying it; ``data_to_send()``
joins the chunks for drivers that want one ``bytes``.

The message's MIME tree is parsed only if an item needs it, and once per
message: BODY[], RFC822, RFC822.SIZE, FLAGS, UID and INTERNALDATE never
parse anything. ``Plan`` sorts out a request's items once for all the
messages of a command; ``render`` is a plan used once.
"""

from __future__ import annotations

from collections.abc import Sequence

from postroom.protocol.imap import envelope, responses, sections, structure
from postroom.protocol.imap.events import MessageData
from postroom.protocol.imap.fetchitems import Item, Request, Section
from postroom.protocol.imap.mime import Part, header_end, parse
from postroom.protocol.imap.syntax import format_date_time

Chunk = bytes | memoryview


def render(
    seq: int,
    message: MessageData,
    request: Request,
    *,
    with_uid: bool,
    with_flags: bool = False,
    utf8: bool = False,
) -> list[Chunk]:
    """The chunks of one FETCH response. *with_uid* adds UID if it was
    not asked for (UID FETCH must report it); *with_flags* adds FLAGS
    (\\Seen was just set by a body fetch, RFC 3501 §6.4.5)."""
    plan = Plan(request, with_uid=with_uid, with_flags=with_flags, utf8=utf8)
    return plan.render(seq, message)


# What Plan does for an item; one small int each, tested in order of
# how often they come (UID FETCH 1:* (UID FLAGS BODY.PEEK[]) first).
_UID, _FLAGS, _WHOLE, _SIZE, _DATE, _SECTION, _RFC822, _STRUCTURE = range(8)


class Plan:
    """``render`` for many messages with one request: the items are
    sorted out, and their labels encoded, once per command rather than
    once per message (a bulk FETCH renders thousands)."""

    def __init__(
        self,
        request: Request,
        *,
        with_uid: bool,
        with_flags: bool = False,
        utf8: bool = False,
    ) -> None:
        items = request.items
        if with_uid and "UID" not in items:
            items = ("UID", *items)
        if with_flags and "FLAGS" not in items:
            items = (*items, "FLAGS")
        self.utf8 = utf8
        self.steps: list[tuple[int, Item, bytes]] = []
        for item in items:
            if isinstance(item, Section):
                kind = _SECTION
                whole = not (item.part or item.spec or item.partial)
                if whole and not item.binary and not item.size_only:
                    kind = _WHOLE  # BODY[]: the stored octets as they are.
                label = item.label().encode("ascii")
            else:
                kind = _SIMPLE_KINDS.get(item, _STRUCTURE)
                label = item.encode("ascii")
            self.steps.append((kind, item, label))
        # Flag lists as sent, by the flags: most messages share a few.
        self._flag_lists: dict[tuple[str, ...], bytes] = {}

    def render(self, seq: int, message: MessageData) -> list[Chunk]:
        """The chunks of *message*'s FETCH response as number *seq*."""
        out: list[Chunk] = []
        pending = bytearray(b"* %d FETCH (" % seq)
        tree: Part | None = None
        first = True
        for kind, item, label in self.steps:
            if not first:
                pending += b" "
            first = False
            octets: Chunk | None
            if kind == _UID:
                pending += b"UID %d" % message.uid
                continue
            if kind == _FLAGS:
                pending += b"FLAGS " + self._flag_list(message.flags)
                continue
            if kind == _WHOLE:
                octets = memoryview(message.load())
            elif kind == _SIZE:
                pending += b"RFC822.SIZE %d" % message.octets()
                continue
            elif kind == _DATE:
                when = message.internaldate
                text = format_date_time(when) if when else "01-Jan-1970 00:00:00 +0000"
                pending += b'INTERNALDATE "' + text.encode("ascii") + b'"'
                continue
            elif kind == _SECTION:
                assert isinstance(item, Section)
                if tree is None and (item.part or item.spec):
                    tree = parse(message.load())
                octets = _section(message, tree, item)
                if item.size_only:
                    pending += label + b" %d" % (len(octets) if octets else 0)
                    continue
            elif kind == _RFC822:
                assert isinstance(item, str)
                octets = _rfc822(message, item)
            else:
                assert isinstance(item, str)
                if tree is None:
                    tree = parse(message.load())
                pending += label + b" " + _structured(item, tree, self.utf8)
                continue

            # A literal: the octets go out as their own chunk, uncopied.
            pending += label + b" "
            if octets is None:
                pending += b"NIL"
                continue
            # literal8 (RFC 3516 §4.2) only where a decoded part holds NUL.
            binary = isinstance(item, Section) and item.binary and b"\0" in octets
            pending += b"%s{%d}\r\n" % (b"~" if binary else b"", len(octets))
            out.append(bytes(pending))
            out.append(octets)
            pending = bytearray()
        pending += b")\r\n"
        out.append(bytes(pending))
        return out

    def _flag_list(self, flags: Sequence[str]) -> bytes:
        if not isinstance(flags, tuple):
            return responses.flag_list(flags)
        rendered = self._flag_lists.get(flags)
        if rendered is None:
            rendered = responses.flag_list(flags)
            if len(self._flag_lists) < 1024:
                self._flag_lists[flags] = rendered
        return rendered


_SIMPLE_KINDS = {
    "UID": _UID,
    "FLAGS": _FLAGS,
    "RFC822.SIZE": _SIZE,
    "INTERNALDATE": _DATE,
    "RFC822": _RFC822,
    "RFC822.HEADER": _RFC822,
    "RFC822.TEXT": _RFC822,
}


_LITERAL_ITEMS = frozenset({"RFC822", "RFC822.HEADER", "RFC822.TEXT"})


def _rfc822(message: MessageData, item: str) -> Chunk:
    data = message.load()
    if item == "RFC822":
        return data
    body_start = header_end(data)  # No need for the MIME tree.
    view = memoryview(data)
    return view[:body_start] if item == "RFC822.HEADER" else view[body_start:]


def _section(message: MessageData, tree: Part | None, item: Section) -> Chunk | None:
    if tree is None:
        octets: Chunk | None = memoryview(message.load())  # BODY[], no parse.
    elif item.binary:
        octets = sections.decoded(tree, item)
    else:
        octets = sections.extract(tree, item)
    if octets is not None and item.partial is not None:
        octets = sections.partial(octets, *item.partial)
    return octets


def _structured(item: str, tree: Part, utf8: bool) -> bytes:
    if item == "ENVELOPE":
        return envelope.render_envelope(tree, utf8=utf8)
    if item == "BODYSTRUCTURE":
        return structure.render(tree, extended=True, utf8=utf8)
    if item == "BODY":
        return structure.render(tree, extended=False, utf8=utf8)
    raise ValueError(item)  # pragma: no cover - the parser allows no other
