"""Cutting the input stream into whole IMAP commands, literals included.

An IMAP command is one line, unless a line ends in a literal announcement
(RFC 3501 §4.3): ``{n}`` (synchronizing: the client waits for our ``+``
continuation request before sending the n octets), ``{n+}``
(non-synchronizing, LITERAL+ RFC 7888: the octets follow at once) or
``~{n}`` (literal8, RFC 3516, same two forms). After the octets the
command goes on with another line, which may announce another literal.
``Framer`` collects those pieces and hands the command over as a list
that alternates text and ``Literal``, text first and last, with every
announcement cut off the text before it. Nothing here knows commands;
``syntax.Cursor`` reads the pieces.

Bounds, so that a client cannot make us hold unbounded memory:

* A text line may be ``max_line`` octets (RFC 7162 §4 asks servers to take
  at least 8192). A longer line is dropped as it arrives, up to its LF,
  and answered with BAD: we cannot tell which part was meant as what.
* A whole command, lines and literals together, may be ``max_command``
  octets (each line counted with 2 more for its line end), so that many
  small literals cannot add up to unbounded memory either; a literal
  that would cross that bound is treated as too big.
* A literal may be ``max_literal`` octets (the connection lowers this
  before login: a password needs little room). For a synchronizing literal we
  answer ``NO [TOOBIG]`` instead of ``+``, so the client never sends it
  (RFC 3501 §7.5: a client must not send the octets without the ``+``).
  A non-synchronizing literal is already on its way: RFC 7888 §4 lets the
  server either read and drop it or close the connection. We read and
  drop it (counting, never storing), then drop the rest of the command
  and answer ``BAD [TOOBIG]``: that keeps the connection usable, which
  matters to the client that only misjudged an APPEND, and costs us no
  memory.

A bare LF ends a line like CRLF: clients never send one on purpose, and
treating it as an error would leave us out of step with a client that
does.

XXX: a command is held whole in memory until its last line, so a
MULTIAPPEND costs the sum of its messages (bounded by ``max_command``),
because the events hand the driver finished messages; streaming APPEND
to storage would need an event per literal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LITERAL_MARK = re.compile(rb"(~?)\{([0-9]{1,10})(\+?)\}\Z")
# tag: 1*<any ASTRING-CHAR except "+"> (RFC 3501 §9).
_TAG = re.compile(rb"[\x21\x23\x24\x26\x27\x2c-\x5b\x5d-\x7a\x7c\x7e]+")


@dataclass(slots=True)
class Literal:
    """The octets of one literal; ``binary`` for literal8 (``~{n}``)."""

    data: bytes
    binary: bool = False


Parts = list[bytes | Literal]


@dataclass(slots=True)
class Command:
    """A whole command: text, literal, text, ... (text first and last)."""

    parts: Parts


@dataclass(slots=True)
class Continue:
    """A synchronizing literal was announced and is within bounds: send
    the ``+`` continuation request now."""


@dataclass(slots=True)
class Refused:
    """A command cut short: a line too long (``reason == "line"``), or a
    literal too big (``"literal"``; ``synchronizing`` tells which kind).
    ``tag`` is the command's tag if it could be read, else ``"*"``."""

    tag: str
    reason: str
    synchronizing: bool = False


Frame = Command | Continue | Refused


def tag_of(text: bytes) -> str:
    """The tag at the start of a command line, or "*" if there is none."""
    m = _TAG.match(text)
    if m is None or text[m.end() : m.end() + 1] not in (b" ", b""):
        return "*"
    return m.group().decode("ascii")


class Framer:
    """Input buffer and the state of the command being assembled."""

    def __init__(self, max_line: int, max_literal: int, max_command: int) -> None:
        self.max_line = max_line
        self.max_literal = max_literal
        self.max_command = max_command
        self._size = 0  # octets of the command so far
        self.buf = bytearray()
        self._parts: Parts = []
        self._literal_left: int | None = None  # octets still to come
        self._literal = bytearray()
        self._binary = False
        self._dropping_literal = False  # too big: count, don't keep
        self._dropping_line = False  # too long: skip to LF
        self._dropped_tag = "*"
        self._refused = False  # drop the rest of this command
        self._scan = 0  # octets of buf known to hold no LF

    @property
    def idle(self) -> bool:
        """No command is half-read."""
        return not self._parts and self._literal_left is None

    def reset(self) -> None:
        """Forget buffered input (STARTTLS, CVE-2011-0411)."""
        self.buf.clear()
        self._parts = []
        self._literal_left = None
        self._literal.clear()
        self._dropping_literal = self._dropping_line = self._refused = False
        self._scan = 0
        self._size = 0

    def next_line(self) -> bytes | None:
        """One plain line without its line end (AUTHENTICATE, IDLE), or
        None until it is complete. A line over the bound comes back as
        ``b"\\0"``, which no caller accepts."""
        buf = self.buf
        lf = buf.find(b"\n", self._scan)
        if lf < 0:
            self._scan = len(buf)
            if len(buf) > self.max_line:
                self._dropping_line = True
                buf.clear()
                self._scan = 0
            return None
        line = bytes(buf[:lf])
        del buf[: lf + 1]
        self._scan = 0
        if self._dropping_line:
            self._dropping_line = False
            return b"\0"
        return line[:-1] if line.endswith(b"\r") else line

    def next_frame(self) -> Frame | None:
        """The next whole command, continuation request or refusal; None
        when more input is needed."""
        while True:
            if self._literal_left is not None:
                if not self._read_literal():
                    return None
                continue
            if self._dropping_line:
                if self.next_line() is None:
                    return None
                tag, self._dropped_tag = self._dropped_tag, "*"
                return Refused(tag, "line")
            if self.buf.find(b"\n", self._scan) < 0 and len(self.buf) > self.max_line:
                # Remember the tag before dropping the line piecemeal.
                head = self._parts[:1] or [bytes(self.buf[:64])]
                self._dropped_tag = _first_tag(head)
                self._parts = []
                self._size = 0
                self._refused = False
            line = self.next_line()
            if line is None:
                return None
            if line == b"\0":
                tag, self._dropped_tag = self._dropped_tag, "*"
                return Refused(tag, "line")
            if len(line) > self.max_line:
                tag = _first_tag(self._parts[:1] or [line])
                self._parts = []
                self._size = 0
                self._refused = False
                return Refused(tag, "line")
            frame = self._take_line(line)
            if frame is not None:
                return frame

    def _take_line(self, line: bytes) -> Frame | None:
        m = _LITERAL_MARK.search(line) if line.endswith(b"}") else None
        self._size += len(line) + 2
        if m is None:
            parts = self._parts
            parts.append(line)
            self._parts = []
            self._size = 0
            if self._refused:
                self._refused = False
                return Refused(_first_tag(parts), "literal")
            return Command(parts)

        self._parts.append(line[: m.start()])
        size = int(m.group(2))
        synchronizing = not m.group(3)
        self._size += size
        too_big = size > self.max_literal or self._size > self.max_command
        if too_big or self._refused:
            if synchronizing:
                # The client waits for "+": answer now, it sends nothing.
                tag = _first_tag(self._parts)
                self._parts = []
                self._size = 0
                self._refused = False
                return Refused(tag, "literal", synchronizing=True)
            self._refused = True
            self._dropping_literal = True
        else:
            self._dropping_literal = False
        self._binary = bool(m.group(1))
        self._literal_left = size
        if synchronizing and not self._refused:
            return Continue()
        return None

    def _read_literal(self) -> bool:
        """Move literal octets out of the buffer; True once complete."""
        left = self._literal_left
        assert left is not None
        buf = self.buf
        if left and buf:
            take = min(left, len(buf))
            if not self._dropping_literal:
                self._literal += buf[:take]
            del buf[:take]
            left -= take
        self._literal_left = left
        if left:
            return False
        self._literal_left = None
        self._scan = 0
        if not self._dropping_literal:
            self._parts.append(Literal(bytes(self._literal), self._binary))
        self._literal = bytearray()
        return True


def _first_tag(parts: Parts) -> str:
    first = parts[0] if parts else b""
    return tag_of(first) if isinstance(first, bytes) else "*"
