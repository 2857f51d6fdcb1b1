"""One IMAP user's mail, as the IMAP core's events need it.

Theory of operation
-------------------
``ImapMailboxes`` stands between the IMAP core's events
(``protocol/imap/events.py``) and the mailbox store
(``mailbox/store.py``): ``answer`` takes one event and returns the
news about the selected mailbox (or None) and the answer to hand to
``ImapConnection.respond``. It never renders anything; the core does.

It holds the selected mailbox, a ``Mailbox`` object: that object *is*
the session's view of the folder, and changes only at ``refresh`` and
through its own STORE, EXPUNGE and COPY. So the UIDs the core numbers
and the UIDs the storage knows agree, and ``poll`` turns a refresh into
a ``MailboxUpdate`` the core reports when RFC 3501 §7.4.1 lets it.

Every method blocks on the file system and SQLite, and a ``Mailbox``
must not be used by two threads at once. The session therefore runs at
most one call at a time, either on the event loop (``cheap`` events:
a FETCH that sets no flag only reads index rows from memory) or in a
worker thread.

Errors from the store become tagged NO answers with RFC 5530 codes:
NONEXISTENT, ALREADYEXISTS, TRYCREATE (APPEND and COPY into a missing
mailbox, RFC 3501 §6.3.11), OVERQUOTA, CANNOT (a name that would leave
the user's storage, or what Maildir++ cannot do).
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable

from postroom.errors import (
    BadMailboxName,
    MailboxError,
    MailboxExists,
    NoSuchMailbox,
    QuotaExceeded,
    UidValidityChanged,
)
from postroom.mailbox.store import Mailbox, MailStore, MessageInfo
from postroom.protocol.imap import events as ev

News = ev.MailboxUpdate | None
Result = tuple[News, ev.Answer]

# Own changes make the directories' mtimes too young to trust, and a
# refresh then lists the whole folder (see mailbox/messages.py). A
# session fetching message after message would pay that per command,
# so commands that RFC 3501 §7.4.1 does not need news for refresh at
# most this often; NOOP, CHECK, IDLE and SELECT always refresh.
_REFRESH_EVERY = 1.0

# Up to this many UIDs, FETCH looks each one up; more, it filters the
# list of all (see ``_fetch``).
_CHEAP_FETCH = 32
# The largest FETCH answered on the event loop (see ``cheap``).
_LOOP_FETCH = 10_000

_SYSTEM_ORDER = {flag: n for n, flag in enumerate(ev.SYSTEM_FLAGS)}
# Flag sets in IMAP order, by the set (see ImapMailboxes._flags).
_ordered: dict[frozenset[str], tuple[str, ...]] = {}


class MailboxGone(Exception):
    """The selected mailbox was deleted, or re-indexed with new UIDs,
    by someone else. Deliberately not a MailboxError: no handler may
    turn it into a NO, since the session must end (``poll``)."""


class ImapMailboxes:
    """*user*'s folders for one IMAP session (see the module docstring)."""

    def __init__(self, store: MailStore, user: str) -> None:
        self.store = store
        self.user = user
        self.selected: Mailbox | None = None
        self._refreshed = 0.0

    def open(self) -> None:
        """Make the user's Maildir and default folders if missing."""
        self.store.ensure_user(self.user)

    def close(self) -> None:
        """Let go of the selected mailbox; safe to call twice."""
        selected, self.selected = self.selected, None
        if selected is not None:
            selected.close()

    # ------------------------------------------------------------------
    # What the session asks

    @staticmethod
    def cheap(event: ev.Event) -> bool:
        """Whether *event* may be answered on the event loop: a FETCH
        that sets no flag takes index rows from memory (~2 us a
        message; the files are read as the response streams), and a
        thread hop would cost more, in GIL handoffs with the loop, than
        it saves. Up to ``_LOOP_FETCH`` UIDs: a bigger one goes to a
        thread rather than hold the loop for more than ~20 ms."""
        if isinstance(event, ev.Fetch):
            writes = event.request.sets_seen and not event.read_only
            return not writes and len(event.uids) <= _LOOP_FETCH
        return isinstance(event, ev.Idle)

    def answer(self, event: ev.Event) -> Result:
        """News for the selected mailbox and the answer to *event*."""
        handler = _HANDLERS.get(type(event))
        if handler is None:
            return None, ev.Refused("Not supported", bad=True)
        try:
            return handler(self, event)
        except BadMailboxName as e:
            return None, ev.Refused(f"Invalid mailbox name: {e}", "CANNOT")
        except NoSuchMailbox:
            return None, ev.Refused("No such mailbox", "NONEXISTENT")
        except MailboxExists:
            return None, ev.Refused("Mailbox already exists", "ALREADYEXISTS")
        except QuotaExceeded:
            return None, ev.Refused("Quota exceeded", "OVERQUOTA")

    def poll(self, *, force: bool = True) -> News:
        """Refresh the selected mailbox; the changes as news, or None.

        Raises MailboxGone when the folder was deleted or its index
        rebuilt (new UIDVALIDITY): the session cannot go on with it
        (RFC 3501 §2.3.1.1) and says BYE.
        """
        mailbox = self.selected
        now = time.monotonic()
        if mailbox is None or (not force and now - self._refreshed < _REFRESH_EVERY):
            return None
        self._refreshed = now
        try:
            changes = mailbox.refresh()
        except (NoSuchMailbox, UidValidityChanged) as e:
            raise MailboxGone(str(e)) from e
        if not changes:
            return None
        return ev.MailboxUpdate(
            added=[m.uid for m in changes.new],
            expunged=changes.expunged,
            flags={m.uid: self._flags(m) for m in changes.flags},
            recent=len(mailbox.recent) if changes.new else None,
        )

    # ------------------------------------------------------------------
    # Mailboxes

    def _select(self, event: ev.Select) -> Result:
        self.close()
        mailbox = self.store.open(self.user, event.mailbox)
        self.selected = mailbox
        self._refreshed = time.monotonic()
        infos = mailbox.messages()
        keywords = sorted({f for m in infos for f in m.flags if f[0] != "\\"})
        return None, ev.MailboxSnapshot(
            uids=[m.uid for m in infos],
            uidvalidity=mailbox.uidvalidity,
            uidnext=mailbox.uidnext,
            flags=(*ev.SYSTEM_FLAGS, *keywords),
            recent=len(mailbox.recent),
            first_unseen=mailbox.first_unseen(),
            read_only=event.read_only,
        )

    def _create(self, event: ev.Create) -> Result:
        self.store.create(self.user, event.mailbox)
        return None, ev.Done()

    def _delete(self, event: ev.Delete) -> Result:
        try:
            self.store.delete(self.user, event.mailbox)
        except (NoSuchMailbox, BadMailboxName):
            raise
        except MailboxError as e:
            return None, ev.Refused(str(e), "CANNOT")
        return None, ev.Done()

    def _rename(self, event: ev.Rename) -> Result:
        try:
            self.store.rename(self.user, event.mailbox, event.new_name)
        except (NoSuchMailbox, MailboxExists, BadMailboxName):
            raise
        except MailboxError as e:
            return None, ev.Refused(str(e), "CANNOT")
        return None, ev.Done()

    def _subscribe(self, event: ev.Subscribe | ev.Unsubscribe) -> Result:
        self.store.subscribe(self.user, event.mailbox, isinstance(event, ev.Subscribe))
        return None, ev.Done()

    def _list(self, event: ev.List) -> Result:
        # The core matches the patterns; we hand over every folder.
        # XXX: subscriptions to folders that do not exist are not
        # listed (\NonExistent): the store keeps them private.
        found = [
            ev.MailboxInfo(
                name=f.name, subscribed=f.subscribed, special_use=f.special_use
            )
            for f in self.store.list_mailboxes(self.user)
        ]
        return None, ev.Listing(found)

    def _status(self, event: ev.Status) -> Result:
        with self._opened(event.mailbox) as mailbox:
            news = self.poll() if mailbox is self.selected else None
            infos = mailbox.messages()
            values = {
                "MESSAGES": len(infos),
                # XXX: opening a folder claims its \Recent messages
                # (mailbox/messages.py), so STATUS of an unselected
                # folder takes \Recent from the next SELECT.
                "RECENT": len(mailbox.recent),
                "UIDNEXT": mailbox.uidnext,
                "UIDVALIDITY": mailbox.uidvalidity,
                "UNSEEN": sum("\\Seen" not in m.flags for m in infos),
                "SIZE": sum(m.size for m in infos),
            }
        return news, ev.StatusData({k: values[k] for k in event.items})

    # ------------------------------------------------------------------
    # Messages in and out of folders

    def _append(self, event: ev.Append) -> Result:
        try:
            opened = self._opened(event.mailbox)
        except NoSuchMailbox:
            return None, ev.Refused("No such mailbox", "TRYCREATE")
        uids: list[int] = []
        with opened as mailbox:
            try:
                for message in event.messages:
                    when = message.internaldate
                    uids.append(
                        mailbox.append(
                            message.content,
                            [f for f in message.flags if f != "\\Recent"],
                            when.timestamp() if when is not None else None,
                        )
                    )
            except BaseException:
                # MULTIAPPEND (RFC 3502 §3): all or none. The view must
                # hold the new UIDs before they can be expunged.
                if uids and mailbox is not self.selected:
                    mailbox.refresh()
                    mailbox.expunge(uids)
                raise
            uidvalidity = mailbox.uidvalidity
        # Into the selected mailbox: report EXISTS at once.
        news = self.poll() if mailbox is self.selected else None
        return news, ev.Appended(uidvalidity, uids)

    def _copy(self, event: ev.Copy) -> Result:
        source = self._require_selected()
        try:
            opened = self._opened(event.mailbox, fresh=True)
        except NoSuchMailbox:
            return None, ev.Refused("No such mailbox", "TRYCREATE")
        with opened as target:
            pairs = source.copy(event.uids, target)
            uidvalidity = target.uidvalidity
        if not pairs:
            # Every message was expunged by another session meanwhile.
            return None, ev.Refused("No messages left to copy", "EXPUNGEISSUED")
        if event.move:
            # RFC 6851 §3.3: the core reports these as expunged.
            source.expunge([src for src, _new in pairs])
        # Into the selected mailbox itself: report EXISTS at once.
        news = self.poll() if _same(source.name, event.mailbox) else None
        return news, ev.Copied(
            uidvalidity, [src for src, _ in pairs], [new for _, new in pairs]
        )

    def _expunge(self, event: ev.Expunge) -> Result:
        mailbox = self._require_selected()
        if event.uids is None:
            return None, ev.Expunged(mailbox.expunge(None))
        # UID EXPUNGE (RFC 4315 §2.1): only the named ones with \Deleted.
        wanted = set(event.uids)
        doomed = [
            m.uid
            for m in mailbox.messages()
            if m.uid in wanted and "\\Deleted" in m.flags
        ]
        return None, ev.Expunged(mailbox.expunge(doomed))

    def _close(self, event: ev.Close) -> Result:
        # CLOSE expunges silently (RFC 3501 §6.4.2); UNSELECT does not.
        if event.expunge and self.selected is not None:
            self.selected.expunge(None)
        self.close()
        return None, ev.Done()

    def _poll(self, event: ev.Poll) -> Result:
        return self.poll(), ev.Done()

    def _idle(self, event: ev.Idle) -> Result:
        return None, ev.Done()

    # ------------------------------------------------------------------
    # Messages of the selected mailbox

    def _fetch(self, event: ev.Fetch) -> Result:
        mailbox = self._require_selected()
        news = self._news()
        # UIDs gone from the storage's view (expunged by a refresh just
        # now) are left out; the core still reports their EXPUNGE.
        if len(event.uids) > _CHEAP_FETCH:
            # Many: take them from the list SELECT built (kept until
            # the view changes) rather than make an info per UID.
            wanted = set(event.uids)
            infos = [m for m in mailbox.messages() if m.uid in wanted]
        else:
            infos = [info for uid in event.uids if (info := _info(mailbox, uid))]
        if event.request.sets_seen and not event.read_only:
            # RFC 3501 §6.4.5: BODY[] without PEEK sets \Seen; the core
            # reports the new flags with the data.
            unseen = [m.uid for m in infos if "\\Seen" not in m.flags]
            if unseen:
                changed = {
                    m.uid: m for m in mailbox.store_flags(unseen, ["\\Seen"], "add")
                }
                infos = [changed.get(m.uid, m) for m in infos]
        request = event.request
        dates = "INTERNALDATE" in request.items
        found = [
            self._data(mailbox, m, content=request.needs_content, dates=dates)
            for m in infos
        ]
        return news, ev.Messages(found)

    def _store(self, event: ev.Store) -> Result:
        mailbox = self._require_selected()
        news = self._news()
        mode = event.mode
        assert mode in ("set", "add", "remove")
        try:
            changed = mailbox.store_flags(event.uids, event.flags, mode)
        except QuotaExceeded:
            raise
        except MailboxError as e:
            # Maildir names keywords with the letters a-z: 26 a folder.
            return news, ev.Refused(str(e), "LIMIT")
        return news, ev.Messages(
            [ev.MessageData(m.uid, self._flags(m)) for m in changed]
        )

    def _search(self, event: ev.Search) -> Result:
        mailbox = self._require_selected()
        news = self._news()
        # Content as loaders: the core's matcher reads a message only
        # when the cheaper keys have not already decided.
        found = [
            self._data(mailbox, m, content=event.needs_content)
            for m in mailbox.messages()
        ]
        return news, ev.Messages(found)

    # ------------------------------------------------------------------
    # Helpers

    def _news(self) -> News:
        return self.poll(force=False)

    def _require_selected(self) -> Mailbox:
        if self.selected is None:  # pragma: no cover - the core prevents it
            raise MailboxError("no mailbox selected")
        return self.selected

    def _opened(self, name: str, *, fresh: bool = False) -> _Opened:
        """*name* as a context manager: the selected mailbox itself if
        it is that one (and not *fresh*), else a folder opened for the
        call and closed after it."""
        selected = self.selected
        if not fresh and selected is not None and _same(selected.name, name):
            return _Opened(selected, owned=False)
        return _Opened(self.store.open(self.user, name), owned=True)

    def _flags(self, info: MessageInfo) -> tuple[str, ...]:
        # System flags first, in a fixed order. Most messages of a
        # folder share a handful of flag sets: sort each set once.
        flags = _ordered.get(info.flags)
        if flags is None:
            flags = tuple(
                sorted(info.flags, key=lambda f: (_SYSTEM_ORDER.get(f, 9), f))
            )
            if len(_ordered) < 4096:
                _ordered[info.flags] = flags
        mailbox = self.selected
        if mailbox is not None and info.uid in mailbox.recent:
            flags = (*flags, "\\Recent")
        return flags

    def _data(
        self,
        mailbox: Mailbox,
        info: MessageInfo,
        *,
        content: bool,
        dates: bool = True,
    ) -> ev.MessageData:
        # Only what the request needs: a bulk FETCH of bodies spends
        # most of its time here and in the core's rendering.
        when = info.internaldate
        return ev.MessageData(
            uid=info.uid,
            flags=self._flags(info),
            internaldate=dt.datetime.fromtimestamp(when, dt.UTC) if dates else None,
            size=info.size,
            content=_loader(mailbox, info.uid, info.size) if content else None,
        )


class _Opened:
    def __init__(self, mailbox: Mailbox, *, owned: bool) -> None:
        self.mailbox = mailbox
        self.owned = owned

    def __enter__(self) -> Mailbox:
        return self.mailbox

    def __exit__(self, *exc: object) -> None:
        if self.owned:
            self.mailbox.close()


def _loader(mailbox: Mailbox, uid: int, size: int) -> Callable[[], bytes]:
    """Read *uid*'s file when the core needs it: one ``os.read`` of the
    size the index knows (plus one octet, to notice a file that is
    larger), like the POP3 maildrop. A file renamed by a flag change
    elsewhere goes through the store's lookup."""
    path = mailbox.path_str(uid)

    def load() -> bytes:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            try:
                return mailbox.read(uid)
            except (KeyError, FileNotFoundError):
                # Expunged by another process after we listed it: an
                # empty body beats a dropped connection (RFC 3501 §7.4.1
                # leaves the choice to the server; Dovecot answers NO).
                return b""
        try:
            data = os.read(fd, size + 1)
            if len(data) <= size:
                return data
            parts = [data]
            while chunk := os.read(fd, 1 << 20):
                parts.append(chunk)
            return b"".join(parts)
        finally:
            os.close(fd)

    return load


def _info(mailbox: Mailbox, uid: int) -> MessageInfo | None:
    try:
        return mailbox.info(uid)
    except KeyError:
        return None


def _same(a: str, b: str) -> bool:
    if a.upper() == "INBOX" and b.upper() == "INBOX":
        return True
    return a == b


_HANDLERS: dict[type, Callable[[ImapMailboxes, object], Result]] = {
    ev.Select: ImapMailboxes._select,  # type: ignore[dict-item]
    ev.Create: ImapMailboxes._create,  # type: ignore[dict-item]
    ev.Delete: ImapMailboxes._delete,  # type: ignore[dict-item]
    ev.Rename: ImapMailboxes._rename,  # type: ignore[dict-item]
    ev.Subscribe: ImapMailboxes._subscribe,  # type: ignore[dict-item]
    ev.Unsubscribe: ImapMailboxes._subscribe,  # type: ignore[dict-item]
    ev.List: ImapMailboxes._list,  # type: ignore[dict-item]
    ev.Status: ImapMailboxes._status,  # type: ignore[dict-item]
    ev.Append: ImapMailboxes._append,  # type: ignore[dict-item]
    ev.Copy: ImapMailboxes._copy,  # type: ignore[dict-item]
    ev.Expunge: ImapMailboxes._expunge,  # type: ignore[dict-item]
    ev.Close: ImapMailboxes._close,  # type: ignore[dict-item]
    ev.Poll: ImapMailboxes._poll,  # type: ignore[dict-item]
    ev.Idle: ImapMailboxes._idle,  # type: ignore[dict-item]
    ev.Fetch: ImapMailboxes._fetch,  # type: ignore[dict-item]
    ev.Store: ImapMailboxes._store,  # type: ignore[dict-item]
    ev.Search: ImapMailboxes._search,  # type: ignore[dict-item]
}
