"""LIST and LSUB (RFC 3501 §6.3.8-9, RFC 5258, RFC 6154).

The driver answers a ``List`` event with the user's mailboxes; this
module picks those the patterns match and renders them. Matching is
the core's because it is pure protocol: "*" matches anything, "%"
anything but the hierarchy delimiter, and "INBOX" is case-insensitive
(RFC 3501 §5.1). The reference name is simply prefixed to each pattern,
which is what RFC 3501 §6.3.8 leaves to the server and what clients
expect.

Attributes: \\HasChildren or \\HasNoChildren (RFC 3348, computed from
the list the driver gave), \\Noselect, \\NonExistent (RFC 5258, for a
subscription without a mailbox), \\Subscribed when asked for or implied
by the SUBSCRIBED selection option, and the special-use attribute
(RFC 6154), which we always include: RFC 6154 §2 allows it, and a
client that did not ask for it ignores an attribute it does not know. With
RECURSIVEMATCH, a mailbox that is not itself selected but has selected
children is listed with CHILDINFO ("SUBSCRIBED") (RFC 5258 §3.5).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from postroom.protocol.imap import responses
from postroom.protocol.imap.events import List, MailboxInfo


@dataclass(frozen=True, slots=True)
class ListOptions:
    """RETURN options and RECURSIVEMATCH; the selection options proper
    travel on the ``List`` event, where the driver can see them."""

    recursive: bool = False
    return_subscribed: bool = False
    return_children: bool = False
    return_special_use: bool = False


def pattern_regex(pattern: str, delimiter: str) -> re.Pattern[str]:
    out = []
    for c in pattern:
        if c == "*":
            out.append(".*")
        elif c == "%":
            out.append(f"[^{re.escape(delimiter)}]*")
        else:
            out.append(re.escape(c))
    regex = "".join(out)
    # INBOX is case-insensitive, and so is a pattern's leading "inbox".
    if pattern[:5].upper() == "INBOX":
        regex = "(?i:INBOX)" + "".join(out[5:])
    return re.compile(regex + r"\Z", re.DOTALL)


def render(
    event: List,
    options: ListOptions,
    mailboxes: Sequence[MailboxInfo],
    *,
    delimiter: str,
    utf8: bool,
) -> list[bytes]:
    """The untagged LIST (or LSUB) responses for *event*."""
    regexes = [pattern_regex(event.reference + p, delimiter) for p in event.patterns]
    names = {m.name for m in mailboxes if m.exists}
    subscribed_only = event.subscribed_only or event.lsub

    def selected(m: MailboxInfo) -> bool:
        if subscribed_only and not m.subscribed:
            return False
        if event.special_use_only and not m.special_use:
            return False
        return m.exists or subscribed_only

    chosen: list[tuple[MailboxInfo, bool]] = []
    seen: set[str] = set()
    for m in mailboxes:
        if m.name in seen or not any(r.match(m.name) for r in regexes):
            continue
        if selected(m):
            chosen.append((m, False))
            seen.add(m.name)
        elif options.recursive and _has_child(m, mailboxes, selected, delimiter):
            chosen.append((m, True))
            seen.add(m.name)

    if not subscribed_only and not event.special_use_only:
        chosen += _implied_parents(event, regexes, names, seen, delimiter)

    verb = b"LSUB" if event.lsub else b"LIST"
    delim = responses.string(delimiter.encode())
    out = []
    for m, childinfo in chosen:
        attrs = _attributes(m, names, delimiter, event, options)
        line = b"* %s %s %s %s" % (
            verb,
            responses.flag_list(attrs),
            delim,
            responses.mailbox(m.name, utf8=utf8),
        )
        if childinfo:
            line += b' ("CHILDINFO" ("SUBSCRIBED"))'
        out.append(line + b"\r\n")
    return out


def _implied_parents(
    event: List,
    regexes: list[re.Pattern[str]],
    names: set[str],
    seen: set[str],
    delimiter: str,
) -> list[tuple[MailboxInfo, bool]]:
    # RFC 3501 §6.3.8: a pattern ending in "%" also returns the levels of
    # hierarchy it matches, with \Noselect when they are no mailbox
    # ("Work" for "Work/Old" and the pattern "%").
    if not any(p.endswith("%") for p in event.patterns):
        return []
    out = []
    for name in sorted(names):
        parts = name.split(delimiter)
        for i in range(1, len(parts)):
            parent = delimiter.join(parts[:i])
            if parent in names or parent in seen:
                continue
            if any(r.match(parent) for r in regexes):
                seen.add(parent)
                out.append((MailboxInfo(parent, selectable=False), False))
    return out


def _has_child(
    m: MailboxInfo,
    mailboxes: Sequence[MailboxInfo],
    selected: Callable[[MailboxInfo], bool],
    delimiter: str,
) -> bool:
    prefix = m.name + delimiter
    return any(c.name.startswith(prefix) and selected(c) for c in mailboxes)


def _attributes(
    m: MailboxInfo,
    existing: set[str],
    delimiter: str,
    event: List,
    options: ListOptions,
) -> list[str]:
    attrs: list[str] = []
    if not m.exists:
        attrs.append("\\NonExistent" if not event.lsub else "\\Noselect")
    elif not m.selectable:
        attrs.append("\\Noselect")
    if m.exists and not event.lsub:
        prefix = m.name + delimiter
        children = any(n.startswith(prefix) for n in existing)
        attrs.append("\\HasChildren" if children else "\\HasNoChildren")
    if (
        m.subscribed
        and not event.lsub
        and (options.return_subscribed or event.subscribed_only)
    ):
        attrs.append("\\Subscribed")
    if m.special_use:
        attrs.append(m.special_use)
    return attrs
