"""SMTP replies explained in plain language.

A reply has a basic code (RFC 5321 §4.2: 250, 550, ...) and, when the
server speaks ENHANCEDSTATUSCODES (RFC 2034), an enhanced status code at
the start of its text (RFC 3463: class.subject.detail, such as 5.7.1).
``explain()`` turns the pair into one or two sentences that say what
went wrong and what to do about it; ``postroom send`` prints them under
failed replies, and the dashboard and the bounce classifier reuse them.

The module is data plus two pure functions: no I/O, no logging. The
texts are our own words; they are tables so that callers (and tests)
can enumerate them. Which text wins:

1. A known enhanced detail code (5.1.1, 4.7.1, ...) is the most
   specific, so it is used, rendered for the class of the *basic* code:
   RFC 2034 §4 requires both to agree, and clients act on the basic code
   when a broken server makes them disagree.
2. Otherwise the basic code's own entry.
3. Otherwise the enhanced subject (X.7.* "security or policy"), else
   the meaning RFC 5321 §4.2.1 gives to the code's first two digits.

Success replies with an X.0.0 code say nothing beyond their basic code,
so they skip step 1.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Meaning:
    """What a status says (``what``) and what to do about it (``todo``).

    ``what`` is a clause starting with a capital letter and without a
    final full stop; ``todo`` is a lower-case imperative clause, or ""
    when there is nothing to do.
    """

    what: str
    todo: str = ""

    def sentence(self) -> str:
        return f"{self.what}: {self.todo}." if self.todo else f"{self.what}."


@dataclass(frozen=True, slots=True)
class EnhancedCode:
    """An RFC 3463 status code, ``class.subject.detail``."""

    klass: int
    subject: int
    detail: int

    def __str__(self) -> str:
        return f"{self.klass}.{self.subject}.{self.detail}"

    @classmethod
    def parse(cls, text: str) -> EnhancedCode | None:
        """The code spelled exactly by *text* ("5.7.1"), else None."""
        match = _ENHANCED.fullmatch(text.strip())
        if match is None:
            return None
        return cls(*(int(part) for part in match.groups()))


# RFC 3463 §2: class is 2, 4 or 5; subject and detail are 1-3 digits
# without leading zeros. We accept leading zeros because some servers
# send them, and a lenient reader costs nothing here.
_ENHANCED: Final = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})")
_ENHANCED_PREFIX: Final = re.compile(r"([245]\.\d{1,3}\.\d{1,3})(?:[ \t]+|$)")
_REPLY_LINE: Final = re.compile(r"(\d{3})(?:[ -]|$)(.*)", re.DOTALL)


def parse_enhanced(text: str) -> tuple[str | None, str]:
    """Split a reply line's text into its enhanced code and the rest.

    *text* is what follows the basic code and separator, for example
    ``"5.7.1 Relaying denied"``. Returns ``("5.7.1", "Relaying denied")``,
    or ``(None, text)`` when the text does not start with a code.
    """
    match = _ENHANCED_PREFIX.match(text)
    if match is None:
        return None, text
    return match.group(1), text[match.end() :]


def parse_reply_line(line: str) -> tuple[int, str | None, str] | None:
    """Parse one reply line, ``"550-5.1.1 No such user"``.

    Returns ``(code, enhanced, text)`` with ``enhanced`` None when
    absent; None when the line does not start with a three-digit code.
    The continuation mark (``-`` or space) is not reported.
    """
    match = _REPLY_LINE.fullmatch(line.rstrip("\r\n"))
    if match is None:
        return None
    enhanced, text = parse_enhanced(match.group(2))
    return int(match.group(1)), enhanced, text


def explain(code: int, enhanced: str | None, text: str) -> str:
    """Explain a reply in one or two plain sentences.

    *code* is the basic reply code; *enhanced* the enhanced status code
    ("5.7.1") or None, in which case one at the start of *text* (the
    reply text) is used if present. Never raises: unknown codes get an
    explanation from their class.
    """
    if enhanced is None:
        enhanced, _ = parse_enhanced(text)
    status = EnhancedCode.parse(enhanced) if enhanced else None
    klass = code // 100

    # 3xx replies ask for more input and carry no enhanced code (RFC 2034
    # §4), and codes outside 2xx-5xx have no class we could apply one to.
    if klass not in (2, 4, 5):
        if code in BASIC:
            return BASIC[code].sentence()
        return _by_digits(code)

    if status is not None and not (klass == 2 and status.detail == 0):
        detail = DETAILS.get((status.subject, status.detail))
        if detail is not None:
            return _with_class(detail, klass)
    if code in BASIC:
        return BASIC[code].sentence()
    if status is not None and status.subject in SUBJECTS:
        return _with_class(SUBJECTS[status.subject], klass)
    return _by_digits(code)


def _with_class(meaning: Meaning, klass: int) -> str:
    # A detail text reads as a failure; the class says how final it is.
    if klass == 2:
        return f"Success: {_decapitalize(meaning.what)}."
    if klass == 4:
        return (
            f"{meaning.sentence()} The failure is temporary, so a later "
            "retry may succeed."
        )
    return meaning.sentence()


def _decapitalize(text: str) -> str:
    # Keep acronyms ("DKIM", "SPF") as they are.
    if len(text) > 1 and text[1].isupper():
        return text
    return text[:1].lower() + text[1:]


def _by_digits(code: int) -> str:
    # RFC 5321 §4.2.1: the first digit gives the outcome, the second the
    # area the reply is about.
    first, second = divmod(code // 10, 10)
    outcome = _OUTCOMES.get(first)
    if outcome is None:
        return (
            f"{code} is not a valid SMTP reply code: the server is "
            "broken or is not an SMTP server."
        )
    area = _AREAS.get(second, "an unspecified matter")
    return f"Non-standard reply code {code} about {area}: {outcome}."


_OUTCOMES: Final[Mapping[int, str]] = {
    2: "the server accepted the command",
    3: "the server waits for more input",
    4: "a temporary failure, so retrying later may succeed",
    5: "a permanent failure, so do not retry without changing something",
}

_AREAS: Final[Mapping[int, str]] = {
    0: "syntax",
    1: "information requested",
    2: "the connection",
    5: "the mail system",
}


# RFC 5321 §4.2.2-4.2.3, plus the codes added by RFC 4954 (AUTH), RFC
# 3207 (STARTTLS), RFC 7504 (521/556) and RFC 1870/3030 usage.
BASIC: Final[Mapping[int, Meaning]] = {
    211: Meaning("System status or help information; nothing to do"),
    214: Meaning("Help text for a human reader; nothing to do"),
    220: Meaning(
        "The server is ready (a greeting, or ready to start TLS after STARTTLS)"
    ),
    221: Meaning("The server is closing the connection, normally after QUIT"),
    235: Meaning("Authentication succeeded"),
    250: Meaning("The command was accepted"),
    251: Meaning("The recipient is not local, and the server will forward the message"),
    252: Meaning(
        "The server will not confirm the address but will accept "
        "the message and try to deliver it"
    ),
    334: Meaning("The server waits for the next step of the AUTH exchange"),
    354: Meaning(
        "The server is ready for the message; end it with a line holding only a dot"
    ),
    421: Meaning(
        "The server is closing the connection (overloaded, shutting "
        "down, or refusing this client)",
        "retry later, and check the server's text for a block",
    ),
    432: Meaning(
        "The account needs a password transition",
        "authenticate once with PLAIN over TLS so the server can "
        "update the stored password",
    ),
    450: Meaning(
        "The mailbox is unavailable for now (busy, or greylisting or a policy block)",
        "retry later; greylisting usually lets a retry through after a few minutes",
    ),
    451: Meaning(
        "The server hit a local error while processing the command",
        "retry later, and tell its administrator if it persists",
    ),
    452: Meaning(
        "The server is short of storage, or this transaction has too many recipients",
        "retry later, or send the remaining recipients in a new transaction",
    ),
    454: Meaning(
        "A temporary failure, usually TLS not available right now or "
        "the authentication back end failing",
        "retry later",
    ),
    455: Meaning(
        "The server cannot accommodate the MAIL or RCPT parameters right now",
        "retry later, or without those parameters",
    ),
    500: Meaning(
        "The server did not recognise the command, or the line was too long",
        "check the command's spelling and keep lines under 1000 octets",
    ),
    501: Meaning(
        "The command's arguments have a syntax error",
        "check the address format and the parameters",
    ),
    502: Meaning(
        "The server does not implement this command",
        "use only commands it lists in its EHLO reply",
    ),
    503: Meaning(
        "Commands came in the wrong order (e.g. RCPT before MAIL, "
        "DATA without recipients, or AUTH or STARTTLS needed first)",
        "follow the sequence the server expects",
    ),
    504: Meaning(
        "A parameter of the command (e.g. an AUTH mechanism) is not implemented",
        "use only what the server advertises in its EHLO reply",
    ),
    521: Meaning(
        "This host does not accept mail at all",
        "send to an address served by a different host",
    ),
    530: Meaning(
        "Authentication is required first", "log in with AUTH, usually after STARTTLS"
    ),
    534: Meaning(
        "The authentication mechanism is too weak for this server",
        "use a stronger mechanism, or start TLS first",
    ),
    535: Meaning(
        "Authentication failed: the credentials were not accepted",
        "check the user name, password and mechanism",
    ),
    538: Meaning(
        "This authentication mechanism needs an encrypted connection",
        "start TLS first, then AUTH",
    ),
    550: Meaning(
        "The action was refused: the mailbox is unavailable (it does "
        "not exist, access is denied, or policy rejected it)",
        "check the address, and read the server's text for the reason",
    ),
    551: Meaning(
        "The recipient is not local to this server",
        "send to the address the server suggests, or through the right server",
    ),
    552: Meaning(
        "A storage limit was exceeded, usually the message is too big",
        "send a smaller message",
    ),
    553: Meaning(
        "The mailbox name is not allowed (bad syntax or not permitted)",
        "check the address format",
    ),
    554: Meaning(
        "The transaction failed (or, as a greeting, there is no SMTP "
        "service for this client)",
        "read the server's text; often the sending IP or the content was blocked",
    ),
    555: Meaning(
        "A MAIL FROM or RCPT TO parameter is not recognised",
        "drop the parameter, or use only the extensions the server advertises",
    ),
    556: Meaning(
        "The recipient's domain does not accept mail", "use a different address"
    ),
}


# RFC 3463 §3: the subject says which part of the system the status is
# about. Used when the detail code is one we do not know.
SUBJECTS: Final[Mapping[int, Meaning]] = {
    0: Meaning("An unspecified problem", "read the server's text"),
    1: Meaning("A problem with an address", "check the sender and recipient addresses"),
    2: Meaning(
        "A problem with the recipient's mailbox",
        "reach the recipient another way, or try later",
    ),
    3: Meaning(
        "A problem in the receiving mail system",
        "tell the server's administrator, or try later",
    ),
    4: Meaning(
        "A network or routing problem between mail servers",
        "check DNS (MX records) and connectivity",
    ),
    5: Meaning("An SMTP protocol problem", "check the commands sent and their syntax"),
    6: Meaning(
        "A problem with the message content or its encoding",
        "change the encoding or the content",
    ),
    7: Meaning(
        "A security or policy problem",
        "check authentication, TLS, and the sender's SPF, DKIM and DMARC",
    ),
}


_M = Meaning  # short alias for the big table below
# Keyed by (subject, detail). RFC 3463 unless noted; later additions
# come from RFC 3886 (1.9), RFC 7505 (1.10, 7.27), RFC 6710 (3.6, 7.15,
# 7.16), RFC 4468 (6.6), RFC 6531 (6.7-6.10), RFC 4954 (5.6, 7.8, 7.9,
# 7.11, 7.12), RFC 5248 (7.10), RFC 7372 (7.13, 7.14, 7.20-7.26), RFC
# 7293 (7.17-7.19), RFC 8617 (7.29), RFC 8689 (7.30) and the IANA
# registry itself (7.28).
DETAILS: Final[Mapping[tuple[int, int], Meaning]] = {
    (0, 0): _M("No further detail was given", "read the server's text"),
    (1, 0): _M(
        "An address problem without further detail",
        "check the sender and recipient addresses",
    ),
    (1, 1): _M(
        "The recipient mailbox does not exist at that domain",
        "check the part before the @ for typos, or ask the recipient "
        "for the right address",
    ),
    (1, 2): _M(
        "The recipient's domain does not exist or does not take mail",
        "check the part after the @ for typos and that the domain has MX records",
    ),
    (1, 3): _M(
        "The recipient address has invalid syntax",
        "write it as local@domain, without spaces or stray characters",
    ),
    (1, 4): _M(
        "The recipient address matches more than one mailbox",
        "use a more specific address",
    ),
    (1, 5): _M("The recipient address is valid"),
    (1, 6): _M(
        "The mailbox has moved and no forwarding address is known",
        "ask the recipient for their new address",
    ),
    (1, 7): _M("The sender address has invalid syntax", "fix the MAIL FROM address"),
    (1, 8): _M(
        "The sender's domain is invalid or cannot receive replies",
        "send from an address whose domain exists and accepts mail",
    ),
    (1, 9): _M(
        "The message went on to a system that cannot report delivery status",
        "expect no further delivery reports for this recipient",
    ),
    (1, 10): _M(
        "The recipient's domain publishes a null MX, so it takes no mail",
        "use an address in a different domain",
    ),
    (2, 0): _M(
        "A problem with the recipient's mailbox",
        "try later, or reach the recipient another way",
    ),
    (2, 1): _M(
        "The recipient's mailbox is disabled", "reach the recipient another way"
    ),
    (2, 2): _M(
        "The recipient's mailbox is full",
        "the recipient must free some space; try again later",
    ),
    (2, 3): _M(
        "The message is larger than the recipient's mailbox allows",
        "send a smaller message, e.g. share big files by link",
    ),
    (2, 4): _M("A mailing list could not be expanded", "tell the list's owner"),
    (3, 0): _M(
        "The receiving mail system has a problem",
        "try later, or tell the server's administrator",
    ),
    (3, 1): _M(
        "The receiving mail system is out of storage",
        "try later; its administrator must free space",
    ),
    (3, 2): _M(
        "The receiving system is not taking network mail now",
        "try later, or tell its administrator",
    ),
    (3, 3): _M(
        "The receiving system lacks a feature the message needs",
        "send the message without that extension or encoding",
    ),
    (3, 4): _M(
        "The message is larger than the receiving system accepts",
        "send a smaller message (see SIZE in the EHLO reply)",
    ),
    (3, 5): _M(
        "The receiving mail system is misconfigured", "tell the server's administrator"
    ),
    (3, 6): _M(
        "The server changed the message's requested priority",
        "check the MT-PRIORITY asked for",
    ),
    (4, 0): _M(
        "A network or routing problem",
        "check DNS and connectivity toward the destination",
    ),
    (4, 1): _M(
        "The next mail server did not answer",
        "check that it is up and that no firewall blocks its port",
    ),
    (4, 2): _M(
        "The connection to the next mail server broke",
        "retry; if it keeps happening, check the network path and TLS",
    ),
    (4, 3): _M(
        "A directory lookup, usually DNS, failed",
        "check that the domain resolves, then retry",
    ),
    (4, 4): _M(
        "No route to the destination was found",
        "check the domain's MX records and the relay's routing",
    ),
    (4, 5): _M("The mail system is congested", "retry later, and more slowly"),
    (4, 6): _M(
        "The message is looping between mail servers",
        "fix the forwarding or routing that sends it back",
    ),
    (4, 7): _M(
        "The message expired in a queue before it could be delivered",
        "find out why the destination was unreachable, then resend",
    ),
    (5, 0): _M("A protocol problem", "check the command and the server's text"),
    (5, 1): _M(
        "The command is unknown or not allowed here",
        "check its spelling and that the server supports it",
    ),
    (5, 2): _M("The command has a syntax error", "fix the command's syntax"),
    (5, 3): _M(
        "The message has too many recipients",
        "split the recipients over several messages",
    ),
    (5, 4): _M(
        "A command argument or parameter is invalid",
        "check parameters such as SIZE, BODY and NOTIFY against the EHLO reply",
    ),
    (5, 5): _M(
        "The two sides disagree on the protocol version",
        "retry without the extension involved",
    ),
    (5, 6): _M(
        "A line of the AUTH exchange was too long",
        "use shorter credentials or another mechanism",
    ),
    (6, 0): _M(
        "A problem with the message content or encoding",
        "check the MIME structure and the transfer encodings",
    ),
    (6, 1): _M(
        "The server does not accept this kind of content",
        "send it in a different format",
    ),
    (6, 2): _M(
        "The message needs converting, but conversion is forbidden",
        "send it in a form the recipient accepts, or allow conversion",
    ),
    (6, 3): _M(
        "The message needs converting, but the server cannot do it",
        "send it already in a form the recipient accepts (e.g. 7-bit with base64)",
    ),
    (6, 4): _M(
        "The message was converted and some content was lost",
        "check what the recipient actually received",
    ),
    (6, 5): _M(
        "Converting the message failed",
        "send it already encoded for the recipient (e.g. 7-bit)",
    ),
    (6, 6): _M(
        "Content the message refers to (BURL) could not be fetched",
        "check the reference and the server's access to it",
    ),
    (6, 7): _M(
        "Non-ASCII addresses are not allowed for this sender or recipient",
        "use an ASCII address, or a path that supports SMTPUTF8",
    ),
    (6, 8): _M(
        "A UTF-8 reply is needed but the client did not ask for SMTPUTF8",
        "use SMTPUTF8 (--smtputf8) with a server that supports it",
    ),
    (6, 9): _M(
        "A message with UTF-8 headers cannot be passed on to a recipient",
        "send it without non-ASCII headers or addresses",
    ),
    # RFC 6531 registered 6.10 for the same condition as 6.8.
    (6, 10): _M(
        "A UTF-8 reply is needed but the client did not ask for SMTPUTF8",
        "use SMTPUTF8 (--smtputf8) with a server that supports it",
    ),
    (7, 0): _M(
        "Refused for a security or policy reason",
        "read the server's text; check authentication, TLS and the sender's reputation",
    ),
    (7, 1): _M(
        "Delivery not authorized (policy), e.g. relaying denied",
        "authenticate (AUTH) or send only to the server's own domains",
    ),
    (7, 2): _M(
        "The sender may not post to this mailing list",
        "ask the list's owner for permission",
    ),
    (7, 3): _M(
        "A required security conversion is not possible",
        "send without that security wrapping, or to a capable server",
    ),
    (7, 4): _M(
        "A security feature the message needs is not supported",
        "send without signing or encryption the server cannot handle",
    ),
    (7, 5): _M(
        "A cryptographic operation (decryption or a signature check) failed",
        "check the keys and certificates involved",
    ),
    (7, 6): _M(
        "The cryptographic algorithm is not supported",
        "use a more widely supported algorithm",
    ),
    (7, 7): _M(
        "The message failed an integrity check",
        "resend it, and look for a relay that rewrites messages",
    ),
    (7, 8): _M(
        "The authentication credentials were rejected",
        "check the user name, the password and the mechanism",
    ),
    (7, 9): _M(
        "The authentication mechanism is too weak for this server",
        "use a stronger mechanism, or authenticate after STARTTLS",
    ),
    (7, 10): _M(
        "Encryption is required first",
        "start TLS (STARTTLS or implicit TLS) before this command",
    ),
    (7, 11): _M(
        "This authentication mechanism needs an encrypted connection",
        "use STARTTLS or implicit TLS, then AUTH",
    ),
    (7, 12): _M(
        "The account needs a password transition",
        "authenticate once with PLAIN over TLS so the server can "
        "update the stored password",
    ),
    (7, 13): _M(
        "The user's account is disabled", "contact the account's administrator"
    ),
    (7, 14): _M(
        "The receiver accepts mail only from senders it has a trust relationship with",
        "arrange one, or send through a relay it trusts",
    ),
    (7, 15): _M(
        "The message's priority is too low to be accepted now",
        "raise the MT-PRIORITY, or retry later",
    ),
    (7, 16): _M(
        "The message is too big for the priority requested",
        "send a smaller message, or use a lower priority",
    ),
    (7, 17): _M(
        "The mailbox changed owner after the date the sender gave (RRVS)",
        "confirm the address still belongs to the intended person",
    ),
    (7, 18): _M(
        "The domain changed owner after the date the sender gave (RRVS)",
        "confirm the domain still belongs to the intended owner",
    ),
    (7, 19): _M(
        "The RRVS ownership check could not be carried out",
        "resend without RRVS, or accept that it cannot be checked",
    ),
    (7, 20): _M(
        "No passing DKIM signature was found",
        "sign the message with DKIM and check the key in DNS",
    ),
    (7, 21): _M(
        "No DKIM signature the receiver finds acceptable was found",
        "sign with a key size and algorithm the receiver accepts",
    ),
    (7, 22): _M(
        "No valid DKIM signature from the author's domain was found",
        "sign with the domain used in the From: header",
    ),
    (7, 23): _M(
        "SPF failed: the sending IP may not send for that domain",
        "add the IP to the domain's SPF record, or send through an authorised server",
    ),
    (7, 24): _M(
        "The SPF check hit an error (DNS failure or a broken record)",
        "fix the domain's SPF record and its DNS",
    ),
    (7, 25): _M(
        "The reverse DNS check of the sending IP failed",
        "give the IP a PTR record whose name resolves back to it",
    ),
    (7, 26): _M(
        "Several authentication checks (SPF, DKIM, ...) failed",
        "fix SPF, DKIM and DMARC alignment for the sending domain",
    ),
    (7, 27): _M(
        "The sender's domain publishes a null MX, so it takes no replies",
        "send from an address in a domain that accepts mail",
    ),
    (7, 28): _M(
        "The server saw a flood of similar mail and refuses more",
        "slow down, and look for a mail loop or a hijacked account",
    ),
    (7, 29): _M(
        "ARC validation of the forwarding chain failed",
        "check the ARC headers added by forwarders",
    ),
    (7, 30): _M(
        "The message requires REQUIRETLS, which this path cannot honour",
        "send over a path where every hop supports REQUIRETLS, or drop the requirement",
    ),
}
