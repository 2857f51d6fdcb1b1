"""Names that become paths: users' directories and folder directories.

Every name here comes from a stranger at some point (a recipient
address, an IMAP CREATE), so each function either returns a path inside
the directory it was given or raises ``BadMailboxName``.

Users. An account ``local@domain`` owns
``<root>/<domain>/<local>/Maildir``; ``domain`` is lower-case A-labels
(an address literal such as ``[127.0.0.1]`` stays as it is), ``local``
is lower-case NFC. RFC 5321 §2.4 lets a server treat local parts as
case-sensitive; users take ``Alice`` and ``alice`` for one person, and
one directory per person is the only safe reading of that. A local part
is accepted only if it is a dot-atom (RFC 5322 §3.2.3) of printable
characters without "/", at most 64 octets (RFC 5321 §4.5.3.1.1).

Folders. Maildir++: INBOX is the Maildir itself, every other folder is
a sub-Maildir ``.<name>`` beside ``cur``/``new``/``tmp``, nested folders
joined by ".": the IMAP hierarchy delimiter is therefore "." (as in
Dovecot's default Maildir++ layout), and "/" may not appear in a name.
Names are handled as Unicode here; on disk they are written in IMAP's
modified UTF-7 (RFC 3501 §5.1.3), as Dovecot and Courier do, so those
servers read the same folders. ``INBOX`` is case-insensitive (RFC 3501
§5.1), also as the first level of a hierarchical name.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import idna

from postroom.errors import BadMailboxName

# Folder names are stored on disk in IMAP's modified UTF-7, as Dovecot
# stores them; the one codec is the IMAP core's (strict: one spelling
# per name), a pure function with no other tie to the protocol.
from postroom.protocol.imap import utf7

DELIMITER = "."
INBOX = "INBOX"
MAX_LOCAL_PART = 64
# A folder's directory name must fit in one path component (255 octets
# on every common file system), with its leading dot.
MAX_FOLDER_NAME = 200

# RFC 5322 atext without "/", plus any non-ASCII character (vetted one
# by one below).
_ATOM = r"[A-Za-z0-9!#$%&'*+=?^_`{|}~\-\u0080-\U0010ffff]+"
_SAFE_LOCAL = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")


# -- users --------------------------------------------------------------


def local_name(local: str) -> str:
    """The directory name for an unquoted local part: lower-case NFC.

    Raises BadMailboxName when it is not a safe dot-atom.
    """
    if len(local.encode("utf-8", "surrogatepass")) > MAX_LOCAL_PART:
        raise BadMailboxName("local part longer than 64 octets")
    if _SAFE_LOCAL.fullmatch(local) is None:
        raise BadMailboxName(f"local part unusable as a mailbox: {local!r}")
    _check_unicode(local)
    # Normalize after lowering, which may leave text outside NFC.
    name = unicodedata.normalize("NFC", local.lower())
    check_component(name)
    return name


def domain_name(domain: str) -> str:
    """*domain* as a directory name: lower-case A-labels."""
    domain = domain.lower().rstrip(".")
    if not domain.isascii() and not domain.startswith("["):
        try:
            domain = idna.encode(domain, uts46=True).decode("ascii")
        except idna.IDNAError:
            raise BadMailboxName(f"invalid domain: {domain!r}") from None
    check_component(domain)
    return domain


def split_address(address: str) -> tuple[str, str]:
    """``local@domain`` -> (local_name, domain_name), both checked.

    The split is at the last "@": the local part of an account address
    is unquoted, and a domain never holds an "@".
    """
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise BadMailboxName(f"not an address: {address!r}")
    return local_name(local), domain_name(domain)


def user_maildir(root: Path, user: str) -> Path:
    """The Maildir of account *user* under *root*; nothing is created."""
    local, domain = split_address(user)
    path = root / domain / local / "Maildir"
    return _inside(root, path)


def check_component(name: str) -> None:
    """The last line of defence for whatever becomes one path component."""
    if (
        not name
        or name.startswith(".")
        or "/" in name
        or "\0" in name
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name)
    ):
        raise BadMailboxName(f"unusable as a directory name: {name!r}")


def _check_unicode(text: str) -> None:
    for char in text:
        # Controls, formatting marks (bidi overrides, zero-width), line
        # and paragraph separators, unassigned and private code points:
        # none belongs in a name a human reads in a shell.
        if not char.isascii() and unicodedata.category(char)[0] in "CZ":
            raise BadMailboxName(f"unusable character U+{ord(char):04X}")


def _inside(root: Path, path: Path) -> Path:
    # Belt and braces: the checks above already make this true.
    base = str(root.absolute()).rstrip("/")
    if not str(path.absolute()).startswith(base + "/"):
        raise BadMailboxName("name leaves the mailbox directory")
    return path


# -- folders --------------------------------------------------------------


def folder_name(name: str) -> str:
    """The canonical form of IMAP folder *name* (Unicode, "." between
    levels, INBOX upper-case); raises BadMailboxName with the reason.
    """
    if not name:
        raise BadMailboxName("empty mailbox name")
    name = unicodedata.normalize("NFC", name)
    parts = name.split(DELIMITER)
    if parts[0].upper() == INBOX:
        parts[0] = INBOX
    for part in parts:
        # An empty level is "a..b", ".a" or "a.": on disk it would make
        # ".." or a hidden name, so it is refused rather than guessed at.
        if not part:
            raise BadMailboxName(f"empty hierarchy level in {name!r}")
        if "/" in part or "\\" in part:
            raise BadMailboxName(f"'/' and '\\' are not allowed: {name!r}")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in part):
            raise BadMailboxName(f"control character in {name!r}")
        _check_unicode(part.replace(" ", ""))
    if len(utf7.encode(name)) > MAX_FOLDER_NAME:
        raise BadMailboxName("mailbox name too long")
    return DELIMITER.join(parts)


def folder_dir(maildir: Path, name: str) -> Path:
    """The directory of folder *name* (canonical) inside *maildir*."""
    if name == INBOX:
        return maildir
    component = DELIMITER + utf7.encode(name)
    check_component(component[1:])
    return _inside(maildir, maildir / component)


def name_from_dir(dirname: str) -> str | None:
    """The folder name of sub-Maildir *dirname* (``.Sent``), or None
    when the directory is not a folder we could have made."""
    if not dirname.startswith(DELIMITER) or dirname in (".", ".."):
        return None
    try:
        return folder_name(utf7.decode(dirname[1:]))
    except (BadMailboxName, ValueError):
        return None
