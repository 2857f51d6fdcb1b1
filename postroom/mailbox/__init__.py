"""Mail storage: users' Maildirs, their folders, and the index that
gives every message an IMAP UID.

The data flow ends here: ``server/`` -> ``queue/`` -> ``delivery/`` ->
``mailbox/``. Local delivery writes through this package, and the POP3
and IMAP servers read through it.

    names.py       user and folder names -> paths that cannot escape
    maildir.py     the Maildir file protocol: unique names, flags in
                   the ``:2,`` info, atomic tmp -> new
    index.py       the per-folder SQLite index (UIDs, UIDVALIDITY)
    messages.py    Mailbox: one session's view of a folder, refresh,
                   flags, expunge, append, copy
    store.py       MailStore: users' folders (create, delete, rename,
                   subscribe, SPECIAL-USE roles), the POP3 lock; the
                   import point for POP3 and IMAP
    quota.py       bytes used per user, from the ``,S=`` in file names
    addressing.py  address -> mailboxes / forward addresses (aliases,
                   catch-all, sub-addressing, postmaster)
    recipients.py  what SMTP asks: RCPT and end-of-data answers, alias
                   expansion at queue time

See docs/architecture.md, "Mailboxes", for the design and its reasons.
"""
