"""The IMAP4rev1 server core (RFC 3501), sans I/O.

A driver uses ``connection.ImapConnection`` and the types in ``events``;
everything else is the core's inside, in the order input flows through
it:

    framing     bytes -> whole commands with their literals (bounded)
    syntax      the ABNF readers: atoms, strings, sets, dates, flags
    utf7        mailbox names in modified UTF-7
    commands    arguments of each command -> events
    fetchitems  FETCH items; searchkeys  SEARCH criteria
    handlers    one function per command: state rule, checks, event
    connection  the state machine and the driver interface
    view        sequence numbers of the selected mailbox, held-back news
    answers     the driver's answers -> responses
    responses   strings, literals, status lines
    fetch       FETCH responses; mime, envelope, structure, sections:
                the message's structure; search: SEARCH matching
    listing     LIST/LSUB matching and attributes
"""
