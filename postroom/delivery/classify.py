"""Sort a failed delivery reply into one of a few failure classes.

The scheduler, the bounce writer, the logs and the dashboard want to
know *why* a recipient failed in a vocabulary smaller than SMTP's: is
the address wrong (stop sending to it), is the receiver pushing back
(slow down), did it take us for a spammer (look at our reputation)?
``classify()`` answers with one of ``CLASSES`` and a sentence a user
can read. Whether to retry is not its business: that is the reply's
basic code (4xx or 5xx) alone, as everywhere in delivery.

The evidence, and how much each counts:

1. A *specific* enhanced status code (RFC 3463 and later registrations)
   decides alone: 5.1.1 is a bad mailbox whatever the text says, 4.2.2
   a full one, 4.7.28 a rate limit. Servers choose these codes on
   purpose, while their texts are free prose that often mention several
   things at once ("user unknown in relay recipient table").
2. Otherwise the text, matched against the wordings real receivers use
   (``_WORDS``, in order: the first group that matches wins). This is
   what separates the many meanings of the *generic* codes: X.7.1 is
   spam, relaying denied or a greylist depending on its words, 4.7.0 is
   a rate limit or a STARTTLS demand.
3. Otherwise the default of the generic enhanced code (X.7.1 policy,
   4.7.0 rate-limited, X.4.0 network, ...), then of its subject.
4. Otherwise the basic reply code (521 bad-domain, 552 content, ...),
   else ``other``.

A permanent X.4.1 or X.4.2 is not taken as a network failure: a
broken connection cannot be permanent, and Microsoft's receivers use
5.4.1 for "Recipient address rejected: Access denied", so such codes
count as generic and the text decides.

The explanation reuses ``postroom.explain``'s text for the code when
the code decided (so ``postroom send`` and bounces say the same thing),
and a per-class sentence otherwise. Pure functions over tables; no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from postroom import explain
from postroom.explain import EnhancedCode, Meaning
from postroom.protocol.smtp.replies import Reply

BAD_MAILBOX = "bad-mailbox"
BAD_DOMAIN = "bad-domain"
MAILBOX_FULL = "mailbox-full"
GREYLISTED = "greylisted"
RATE_LIMITED = "rate-limited"
SPAM_BLOCKED = "spam-blocked"  # spam, IP or domain reputation, blocklists
POLICY = "policy"  # relaying, SPF/DKIM/DMARC, client checks, other rules
TLS = "tls"
DNS = "dns"
NETWORK = "network"  # connection refused, timed out or lost
CONTENT = "content"  # size, format, 8-bit/SMTPUTF8, viruses
OTHER = "other"
CLASSES: Final = (
    BAD_MAILBOX,
    BAD_DOMAIN,
    MAILBOX_FULL,
    GREYLISTED,
    RATE_LIMITED,
    SPAM_BLOCKED,
    POLICY,
    TLS,
    DNS,
    NETWORK,
    CONTENT,
    OTHER,
)


@dataclass(frozen=True, slots=True)
class Classification:
    """``cls`` is one of ``CLASSES``; ``explanation`` one plain sentence
    for the person who sent the message."""

    cls: str
    explanation: str


def classify(reply: Reply) -> Classification:
    """Classify a failed reply (4xx or 5xx) by the rules above.

    The enhanced code is taken from ``reply.enhanced``, else from the
    start of the text when a parser left it there. Never raises; a
    positive reply, which is no failure, comes back as ``other``.
    """
    status = _status(reply)
    text = reply.text.lower()

    # 1. A specific enhanced code.
    if status is not None and reply.code >= 400:
        cls = _specific(status)
        if cls is not None:
            return Classification(cls, _code_sentence(status, cls))

    # 2. The words of the text.
    for cls, pattern in _WORDS:
        if pattern.search(text):
            return Classification(cls, _class_sentence(cls, reply))
    if _looks_greylisted(reply, status, text):
        return Classification(GREYLISTED, _class_sentence(GREYLISTED, reply))

    # 3. The generic enhanced code's default, then its subject's.
    if status is not None and reply.code >= 400:
        cls = _GENERIC.get((status.klass, status.subject, status.detail))
        if cls is None and (status.subject, status.detail) not in _KNOWN_GENERIC:
            cls = _SUBJECT_DEFAULT.get((status.klass, status.subject))
        if cls is not None:
            return Classification(cls, _class_sentence(cls, reply))

    # 4. The basic code.
    cls = _BASIC.get(reply.code, OTHER)
    return Classification(cls, _class_sentence(cls, reply))


def _status(reply: Reply) -> EnhancedCode | None:
    if reply.enhanced:
        return EnhancedCode.parse(reply.enhanced)
    enhanced, _ = explain.parse_enhanced(reply.text)
    return EnhancedCode.parse(enhanced) if enhanced else None


def _specific(status: EnhancedCode) -> str | None:
    key = (status.subject, status.detail)
    if status.klass == 5 and key in _TEMPORARY_ONLY:
        return None
    if status.subject == 6:
        # Every X.6.x is about the message's content or encoding.
        return CONTENT
    return _SPECIFIC.get(key)


def _looks_greylisted(reply: Reply, status: EnhancedCode | None, text: str) -> bool:
    # "Try again later" alone says little: Gmail closes throttled
    # connections with "421 4.7.0 Try again later". A 450/451 to a
    # recipient with a greylisting-style code and such words is the
    # pattern of milter-greylist, postgrey and most hosted filters.
    if reply.code not in (450, 451):
        return False
    if status is not None and str(status) not in ("4.7.1", "4.2.0", "4.7.0", "4.0.0"):
        return False
    return _LATER.search(text) is not None


# Step 1: (subject, detail) -> class, for codes that mean one thing.
_SPECIFIC: Final[Mapping[tuple[int, int], str]] = {
    (1, 1): BAD_MAILBOX,  # bad destination mailbox address
    (1, 2): BAD_DOMAIN,  # bad destination system address
    (1, 3): BAD_MAILBOX,  # bad destination mailbox address syntax
    (1, 4): BAD_MAILBOX,  # ambiguous destination mailbox
    (1, 6): BAD_MAILBOX,  # mailbox has moved, no forwarding address
    (1, 7): POLICY,  # bad sender's mailbox syntax
    (1, 8): POLICY,  # bad sender's system address
    (1, 10): BAD_DOMAIN,  # null MX (RFC 7505)
    (2, 1): BAD_MAILBOX,  # mailbox disabled
    (2, 2): MAILBOX_FULL,
    (2, 3): CONTENT,  # message longer than the mailbox allows
    (3, 1): OTHER,  # mail system full
    (3, 2): OTHER,  # system not accepting network messages
    (3, 3): CONTENT,  # system not capable of selected features
    (3, 4): CONTENT,  # message too big for system
    (4, 1): NETWORK,  # no answer from host (temporary only)
    (4, 2): NETWORK,  # bad connection (temporary only)
    (4, 3): DNS,  # directory server failure
    (4, 5): RATE_LIMITED,  # mail system congestion
    (4, 6): OTHER,  # routing loop
    (4, 7): OTHER,  # delivery time expired
    (5, 3): RATE_LIMITED,  # too many recipients for one transaction
    (7, 2): POLICY,  # mailing list expansion prohibited
    (7, 3): POLICY,
    (7, 4): TLS,  # security features not supported (Postfix: no STARTTLS)
    (7, 5): TLS,  # cryptographic failure (handshake, certificate)
    (7, 6): TLS,  # cryptographic algorithm not supported
    (7, 7): POLICY,
    (7, 8): POLICY,  # authentication credentials invalid
    (7, 9): POLICY,  # mechanism too weak (Yahoo: "policy reasons")
    (7, 10): TLS,  # encryption needed
    (7, 11): TLS,  # encryption required for the mechanism
    (7, 12): POLICY,
    (7, 13): POLICY,  # user account disabled
    (7, 14): POLICY,
    (7, 15): POLICY,
    (7, 16): POLICY,
    (7, 17): POLICY,
    (7, 18): POLICY,
    (7, 19): POLICY,
    (7, 20): POLICY,  # 7.20-7.26: DKIM, SPF, reverse DNS, DMARC failures
    (7, 21): POLICY,
    (7, 22): POLICY,
    (7, 23): POLICY,
    (7, 24): POLICY,
    (7, 25): POLICY,
    (7, 26): POLICY,
    (7, 27): POLICY,  # the sender's domain has a null MX
    (7, 28): RATE_LIMITED,  # flood of similar mail (Gmail's 4.7.28)
    (7, 29): POLICY,  # ARC
    (7, 30): TLS,  # REQUIRETLS cannot be honoured
}

# Codes in _SPECIFIC that are specific only when temporary (see above).
_TEMPORARY_ONLY: Final = frozenset({(4, 1), (4, 2)})

# Step 3: defaults of generic codes, by (class, subject, detail), once
# the text has said nothing.
_GENERIC: Final[Mapping[tuple[int, int, int], str]] = {
    (4, 7, 0): RATE_LIMITED,  # Gmail, Yahoo, Postfix anvil all use it
    (5, 7, 0): POLICY,
    (4, 7, 1): POLICY,  # client checks: "cannot find your hostname"
    (5, 7, 1): POLICY,  # relaying denied, and spam when the text says so
    (4, 4, 0): NETWORK,
    (5, 4, 0): NETWORK,
    (4, 4, 4): DNS,  # Postfix: MX lookup failed or found nothing usable
    (5, 4, 4): DNS,
}
# Generic codes with no default of their own: the basic code decides,
# not the subject default below.
_KNOWN_GENERIC: Final = frozenset(
    {(0, 0), (1, 0), (2, 0), (3, 0), (5, 0), (4, 1), (4, 2)}
)

# Unknown details (Microsoft's 5.7.606, 4.7.650, ...) fall back to
# their subject.
_SUBJECT_DEFAULT: Final[Mapping[tuple[int, int], str]] = {
    (4, 4): NETWORK,
    (5, 4): OTHER,
    (4, 7): POLICY,
    (5, 7): POLICY,
    (4, 3): OTHER,
    (5, 3): OTHER,
    (4, 5): OTHER,
    (5, 5): OTHER,
}

# Step 4: the basic code, when nothing else spoke. 550 and 554 stay
# "other": they are used for everything, and calling a mailbox bad on
# no evidence would get a good address suppressed.
_BASIC: Final[Mapping[int, str]] = {
    521: BAD_DOMAIN,  # RFC 7504: this host takes no mail
    556: BAD_DOMAIN,  # RFC 7504: the domain takes no mail
    551: BAD_MAILBOX,  # user not local
    553: BAD_MAILBOX,  # mailbox name not allowed
    552: CONTENT,  # exceeded storage allocation: usually size
    530: POLICY,  # authentication required
    534: POLICY,
    535: POLICY,
    538: TLS,
}


def _words(*alternatives: str) -> re.Pattern[str]:
    return re.compile("|".join(alternatives))


# Step 2, in order: the first group that matches wins. The order
# settles texts that mention two things: Gmail's "unusual rate of
# unsolicited mail ... temporarily rate limited" is a rate limit, but
# its permanent "unusual rate of unsolicited mail" is a spam block,
# hence explicit rate phrases before spam words, and spam before the
# generic "unusual rate". All patterns see the lower-cased text.
_WORDS: Final[tuple[tuple[str, re.Pattern[str]], ...]] = (
    (GREYLISTED, _words(r"gr[ae]y[- ]?list")),
    (
        TLS,
        _words(
            r"\bstarttls\b",
            r"\btls\b",
            r"\bssl\b",
            r"certificate",
            r"handshake",
            r"encrypt",
        ),
    ),
    (
        RATE_LIMITED,
        _words(
            r"rate[- ]?limit",
            r"throttl",
            r"too many (?:connections|concurrent|sessions|messages|mails?"
            r"|recipients|simultaneous)",
            r"too fast",
            r"slow down",
            r"(?:sending|message|connection) rate",
            r"unexpected volume",
            r"high volume",
            r"server busy",
            r"\bper (?:second|minute|hour|day)\b",
        ),
    ),
    (
        SPAM_BLOCKED,
        _words(
            r"spam",
            r"\bblock ?list",
            r"\bblack ?list",
            r"\bdeny ?list",
            r"blocked using",
            r"listed (?:at|on|in|by)\b",
            r"\b(?:dns)?rbl\b",
            r"dnsbl",
            r"reputation",
            r"unsolicited",
            r"\bjunk\b",
            r"banned sending",
            r"\bbulk mail",
            r"sorbs",
            r"barracuda",
        ),
    ),
    (
        POLICY,
        _words(
            r"relay(?:ing)? (?:access )?denied",
            r"relay(?:ing)? not (?:permitted|allowed)",
            r"not permitted to relay",
            r"unable to relay",
            r"sender address rejected",
            r"sender verify",
            r"client host rejected",
            r"helo command rejected",
            r"cannot find your (?:hostname|reverse)",
            r"reverse (?:dns|hostname)",
            r"\bspf\b",
            r"\bdkim\b",
            r"\bdmarc\b",
            r"not authori[sz]ed",
            r"authentication required",
            r"access denied",
            r"\bpolicy\b",
            r"prohibited",
        ),
    ),
    (
        MAILBOX_FULL,
        _words(
            r"quota",
            r"mailbox (?:is )?full",
            r"full mailbox",
            r"inbox (?:is )?full",
            r"storage allocation",
            r"mailbox size limit",
            r"insufficient (?:disk )?space",
        ),
    ),
    (
        BAD_DOMAIN,
        _words(
            r"domain (?:name )?(?:not found|does not exist|doesn't exist|unknown)",
            r"host or domain name not found",
            r"no such domain",
            r"(?:unknown|invalid|unrouteable|unroutable) domain",
            r"unrout(?:e)?able",
            r"nxdomain",
            r"null mx",
            r"domain (?:does not|doesn't) accept mail",
        ),
    ),
    (
        BAD_MAILBOX,
        _words(
            r"user unknown",
            r"unknown (?:user|recipient|mailbox|address)",
            r"no such (?:user|mailbox|recipient|account|address)",
            r"(?:mailbox|user|recipient|account|address)(?: name)? "
            r"(?:not found|unknown|does not exist|doesn't exist|not exist)",
            r"does not exist",
            r"mailbox (?:is )?unavailable",
            r"invalid (?:recipient|mailbox|address|user)",
            r"not a valid (?:mailbox|recipient|user|address)",
            r"(?:mailbox|account) (?:is |has been )?(?:disabled|inactive|deactivated"
            r"|suspended)",
            r"no longer (?:exists|active|valid|in use)",
            r"no mailbox here",
            r"(?:doesn't|does not) have an account",
            r"bad destination mailbox",
        ),
    ),
    (
        CONTENT,
        _words(
            r"message (?:size|length|is too|too)",
            r"too (?:big|large)",
            r"size (?:limit|exceeds)",
            r"exceeds .*size",
            r"8-?bit",
            r"smtputf8",
            r"utf-?8",
            r"virus",
            r"malware",
            r"attachment",
            r"\bcontent\b",
            r"line too long",
        ),
    ),
    (
        DNS,
        _words(
            r"\bdns\b",
            r"name service",
            r"name ?server",
            r"servfail",
            r"\blookup\b",
            r"\bresolv",
        ),
    ),
    (
        NETWORK,
        _words(
            r"connection (?:refused|reset|timed out|closed|lost|dropped|was closed)",
            r"lost connection",
            r"timed out",
            r"time-?out",
            r"network is unreachable",
            r"no route to host",
            r"host unreachable",
            r"broken pipe",
            r"\beof\b",
        ),
    ),
)

_LATER: Final = _words(
    r"try (?:again )?later",
    r"retry later",
    r"come back later",
    r"please retry",
    r"temporar(?:il)?y (?:deferred|rejected|refused)",
)


# -- explanations ------------------------------------------------------

_MEANINGS: Final[Mapping[str, Meaning]] = {
    BAD_MAILBOX: Meaning(
        "The recipient's mailbox does not exist or cannot take mail",
        "check the address for typos, or ask the recipient for one that works",
    ),
    BAD_DOMAIN: Meaning(
        "The recipient's domain does not exist or takes no mail",
        "check the part after the @ for typos",
    ),
    MAILBOX_FULL: Meaning(
        "The recipient's mailbox is full",
        "the recipient must make room before the message can be delivered",
    ),
    GREYLISTED: Meaning(
        "The receiving server holds back mail from senders it has not "
        "seen before (greylisting)",
        "nothing to do, as the retry normally gets through within minutes",
    ),
    RATE_LIMITED: Meaning(
        "The receiving server is limiting how much mail it takes from us",
        "the message is retried more slowly; if it keeps happening, send less "
        "at a time",
    ),
    SPAM_BLOCKED: Meaning(
        "The receiving server took the mail for spam, or distrusts the "
        "sending server's address or domain (a blocklist or a poor reputation)",
        "check the sending IP against public blocklists and review the content",
    ),
    POLICY: Meaning(
        "The receiving server's rules refused the mail",
        "read its text, and check SPF, DKIM and DMARC and that it accepts mail from us",
    ),
    TLS: Meaning(
        "The connection could not be secured with TLS as needed",
        "check the TLS settings and certificates on both sides",
    ),
    DNS: Meaning(
        "The destination's DNS records could not be looked up",
        "check that the domain's MX and address records resolve",
    ),
    NETWORK: Meaning(
        "The receiving mail server could not be reached, or the connection broke",
        "check that it is up and reachable on its SMTP port",
    ),
    CONTENT: Meaning(
        "The receiving server refused the message itself (its size, "
        "encoding or content)",
        "send a smaller or plainer message",
    ),
}


def _code_sentence(status: EnhancedCode, cls: str) -> str:
    # explain.py's entry for the exact code, when it has one, so that
    # the CLI and the bounce explain a code with the same words.
    meaning = explain.DETAILS.get((status.subject, status.detail))
    if meaning is None:
        return _class_sentence(cls, None)
    return meaning.sentence()


def _class_sentence(cls: str, reply: Reply | None) -> str:
    meaning = _MEANINGS.get(cls)
    if meaning is not None:
        return meaning.sentence()
    # "other": what explain.py says of the basic code, in one sentence.
    basic = explain.BASIC.get(reply.code) if reply is not None else None
    if basic is not None:
        return basic.sentence()
    return "The receiving server refused the message without a reason we know."
