"""Failure classes of real-world replies (postroom.delivery.classify).

The texts are written in the style of the big receivers (Gmail-like,
Outlook-like, Yahoo-like), of Postfix and Exim, and of the replies our
own SMTP client makes up for DNS and connection failures. Each row is
(code, enhanced code or "", text, expected class).
"""

from __future__ import annotations

import pytest

from postroom.delivery import classify as c
from postroom.delivery.classify import Classification, classify
from postroom.protocol.smtp.replies import Reply

CASES = [
    # -- bad mailbox ---------------------------------------------------
    (550, "5.1.1", "The email account that you tried to reach does not exist. "
     "Please try double-checking the recipient's email address for typos",
     c.BAD_MAILBOX),
    (550, "5.1.1", "<nobody@dest.test>: Recipient address rejected: User "
     "unknown in virtual mailbox table", c.BAD_MAILBOX),
    (550, "5.1.1", "<x@dest.test>: Recipient address rejected: User unknown "
     "in relay recipient table", c.BAD_MAILBOX),
    (550, "5.5.0", "Requested action not taken: mailbox unavailable "
     "(S2017062302)", c.BAD_MAILBOX),
    (554, "", "delivery error: dd This user doesn't have an account here - "
     "mta7.mail.test", c.BAD_MAILBOX),
    (552, "", "1 Requested mail action aborted, mailbox not found",
     c.BAD_MAILBOX),
    (554, "", "30 Sorry, your message to someone@yahoo.test cannot be "
     "delivered. This mailbox is disabled (554.30)", c.BAD_MAILBOX),
    (550, "", "No such user here", c.BAD_MAILBOX),
    (550, "5.2.1", "The email account that you tried to reach is disabled",
     c.BAD_MAILBOX),
    (550, "", "5.1.1 <u@dest.test>... User unknown", c.BAD_MAILBOX),
    (553, "5.1.3", "Bad recipient address syntax", c.BAD_MAILBOX),
    (550, "", "Invalid recipient <u@dest.test>", c.BAD_MAILBOX),
    (450, "4.1.1", "<u@dest.test>: Recipient address rejected: unverified "
     "address: host mx.dest.test said: 550 no such mailbox", c.BAD_MAILBOX),
    (551, "", "User not local; please try <u@other.test>", c.BAD_MAILBOX),
    # -- bad domain ----------------------------------------------------
    (450, "4.1.2", "<u@nx.test>: Recipient address rejected: Domain not found",
     c.BAD_DOMAIN),
    (550, "5.1.2", "Host unknown", c.BAD_DOMAIN),
    (556, "5.1.10", "Recipient domain has null MX", c.BAD_DOMAIN),
    (550, "5.4.4", "Host or domain name not found. Name service error for "
     "name=nx.test type=A: Host not found", c.BAD_DOMAIN),
    (550, "", "Unrouteable address", c.BAD_DOMAIN),
    (521, "", "mx.dest.test does not accept mail", c.BAD_DOMAIN),
    # -- mailbox full --------------------------------------------------
    (452, "4.2.2", "The email account that you tried to reach is over quota. "
     "Please direct the recipient to the help centre", c.MAILBOX_FULL),
    (552, "5.2.2", "STOREDRV.Deliver; mailbox full", c.MAILBOX_FULL),
    (552, "", "Requested mail action aborted: exceeded storage allocation",
     c.MAILBOX_FULL),
    (452, "4.2.0", "Mailbox quota exceeded, try again later", c.MAILBOX_FULL),
    (550, "5.0.0", "Recipient's inbox is full", c.MAILBOX_FULL),
    # -- greylisting ---------------------------------------------------
    (450, "4.2.0", "<u@dest.test>: Recipient address rejected: Greylisted, "
     "see https://greylist.dest.test/help", c.GREYLISTED),
    (451, "4.7.1", "Greylisting in action, please come back later",
     c.GREYLISTED),
    (451, "4.7.1", "Please try again later", c.GREYLISTED),
    (450, "", "Temporarily rejected, try again later", c.GREYLISTED),
    (451, "", "Message temporarily deferred - [160]", c.GREYLISTED),
    (450, "4.7.1", "Graylisted for 300 seconds", c.GREYLISTED),
    # -- rate limits ---------------------------------------------------
    (421, "4.7.0", "Try again later, closing connection. (EHLO)",
     c.RATE_LIMITED),
    (421, "4.7.0", "[192.0.2.9] Our system has detected an unusual rate of "
     "unsolicited mail originating from your IP address. To protect our "
     "users from spam, mail sent from your IP address has been temporarily "
     "rate limited", c.RATE_LIMITED),
    (450, "4.7.28", "[192.0.2.9] Our system has detected an unusual rate of "
     "unsolicited mail", c.RATE_LIMITED),
    (421, "4.7.0", "[TSS04] Messages from 192.0.2.9 temporarily deferred due "
     "to unexpected volume or user complaints", c.RATE_LIMITED),
    (421, "4.7.650", "The mail server [192.0.2.9] has been temporarily rate "
     "limited due to IP reputation", c.RATE_LIMITED),
    (451, "4.7.500", "Server busy. Please try again later from [192.0.2.9]. "
     "(S77719)", c.RATE_LIMITED),
    (421, "4.7.0", "mx.dest.test Error: too many connections from 192.0.2.9",
     c.RATE_LIMITED),
    (421, "", "RP-001 Unfortunately, some messages from 192.0.2.9 weren't "
     "sent. We have limits for how many messages can be sent per hour and "
     "per day", c.RATE_LIMITED),
    (452, "4.5.3", "Too many recipients", c.RATE_LIMITED),
    (450, "", "Too many messages, slow down", c.RATE_LIMITED),
    (421, "4.4.5", "Server busy, try again later", c.RATE_LIMITED),
    # -- spam, reputation, blocklists ---------------------------------
    (550, "5.7.1", "Our system has detected that this message is likely "
     "unsolicited mail. To reduce the amount of spam sent to us, this "
     "message has been blocked", c.SPAM_BLOCKED),
    (550, "5.7.1", "[192.0.2.9 12] Our system has detected an unusual rate "
     "of unsolicited mail originating from your IP address", c.SPAM_BLOCKED),
    (554, "5.7.1", "Service unavailable; Client host [192.0.2.9] blocked "
     "using zen.spamhaus.org", c.SPAM_BLOCKED),
    (550, "5.7.1", "Unfortunately, messages from [192.0.2.9] weren't sent. "
     "Please contact your Internet service provider since part of their "
     "network is on our block list (S3150)", c.SPAM_BLOCKED),
    (550, "", "SC-001 Unfortunately, messages from 192.0.2.9 weren't sent. "
     "Part of their network is on our block list", c.SPAM_BLOCKED),
    (550, "5.7.606", "Access denied, banned sending IP [192.0.2.9]",
     c.SPAM_BLOCKED),
    (554, "", "Your IP 192.0.2.9 is blacklisted", c.SPAM_BLOCKED),
    (550, "5.7.0", "Sending IP has a poor reputation", c.SPAM_BLOCKED),
    (554, "5.7.1", "Message rejected as spam by Content Filtering",
     c.SPAM_BLOCKED),
    (550, "", "Rejected: 192.0.2.9 listed at bl.dnsbl.test", c.SPAM_BLOCKED),
    # -- policy --------------------------------------------------------
    (554, "5.7.1", "<u@dest.test>: Relay access denied", c.POLICY),
    (550, "5.7.1", "[192.0.2.9] The IP you're using to send mail is not "
     "authorized to send email directly to our servers", c.POLICY),
    (550, "5.7.26", "This mail has been blocked because the sender is "
     "unauthenticated", c.POLICY),
    (550, "5.7.23", "The message was rejected because of Sender Policy "
     "Framework violation", c.POLICY),
    (554, "5.7.9", "Message not accepted for policy reasons. See "
     "https://postmaster.yahoo.test/error-codes", c.POLICY),
    (450, "4.7.1", "Client host rejected: cannot find your hostname, "
     "[192.0.2.9]", c.POLICY),
    (550, "5.7.1", "Unauthenticated email from sender.test is not accepted "
     "due to domain's DMARC policy", c.POLICY),
    (553, "5.7.2", "[TSS09] All messages from 192.0.2.9 will be permanently "
     "deferred; Retrying will NOT succeed", c.POLICY),
    (550, "5.7.708", "Service unavailable. Access denied, traffic not "
     "accepted from this IP", c.POLICY),
    (550, "5.1.8", "<a@sender.test>: Sender address rejected: Domain not "
     "found", c.POLICY),
    (550, "", "Verification failed for <a@sender.test>; Sender verify "
     "failed", c.POLICY),
    (535, "5.7.8", "Username and Password not accepted", c.POLICY),
    (550, "5.4.1", "Recipient address rejected: Access denied. "
     "AS(201806281)", c.POLICY),
    # -- TLS -----------------------------------------------------------
    (530, "5.7.0", "Must issue a STARTTLS command first", c.TLS),
    (454, "4.7.0", "TLS not available due to local problem", c.TLS),
    (450, "4.7.4", "TLS is required, but was not offered by host "
     "mx.dest.test[192.0.2.1]", c.TLS),
    (450, "4.7.5", "Server certificate not trusted", c.TLS),
    (451, "4.7.5", "Cannot start TLS: handshake failure", c.TLS),
    (530, "5.7.10", "Encryption needed", c.TLS),
    (538, "", "Encryption required for requested authentication mechanism",
     c.TLS),
    (550, "5.7.30", "REQUIRETLS support required", c.TLS),
    # -- DNS -----------------------------------------------------------
    (451, "4.4.3", "Host or domain name not found. Name service error for "
     "name=dest.test type=MX: Host not found, try again", c.DNS),
    (451, "4.4.4", "No usable MX host found for dest.test", c.DNS),
    (451, "", "DNS lookup of dest.test timed out (SERVFAIL)", c.DNS),
    # -- network -------------------------------------------------------
    (451, "4.4.1", "connect to mx.dest.test[192.0.2.1]:25: Connection "
     "refused", c.NETWORK),
    (451, "4.4.2", "conversation with mx.dest.test[192.0.2.1] timed out "
     "while receiving the initial server greeting", c.NETWORK),
    (451, "4.4.2", "lost connection with mx.dest.test[192.0.2.1] while "
     "sending RCPT TO", c.NETWORK),
    (451, "4.4.2", "connection lost before sending", c.NETWORK),
    (421, "", "Connection timed out", c.NETWORK),
    (451, "4.4.0", "Network is unreachable", c.NETWORK),
    # -- content -------------------------------------------------------
    (552, "5.3.4", "Message size exceeds fixed limit", c.CONTENT),
    (552, "5.2.3", "Your message exceeded Google's message size limits",
     c.CONTENT),
    (554, "5.6.0", "Message contains a bare <CR> or <LF>", c.CONTENT),
    (550, "5.6.7", "Non-ASCII addresses are not permitted", c.CONTENT),
    (554, "5.6.9", "UTF-8 headers cannot be downgraded", c.CONTENT),
    (552, "5.7.0", "This message was blocked because its content presents a "
     "potential security issue", c.CONTENT),
    (554, "5.0.0", "Virus found: Eicar-Test-Signature", c.CONTENT),
    (550, "", "Message too big", c.CONTENT),
    (552, "", "Requested mail action aborted: exceeded limits", c.CONTENT),
    (554, "5.3.3", "8-bit MIME is not supported", c.CONTENT),
    # -- other ---------------------------------------------------------
    (451, "4.3.0", "Local error in processing, try again later", c.OTHER),
    (452, "4.3.1", "Insufficient system storage", c.OTHER),
    (421, "4.3.2", "Service shutting down, try again later", c.OTHER),
    (550, "5.0.0", "returned to sender by the administrator", c.OTHER),
    (554, "5.4.6", "Too many hops", c.OTHER),
    (550, "", "Rejected", c.OTHER),
    (554, "", "Transaction failed", c.OTHER),
    (451, "4.3.5", "local delivery is not configured", c.OTHER),
]


@pytest.mark.parametrize(("code", "enhanced", "text", "expected"), CASES)
def test_real_world_replies(code: int, enhanced: str, text: str,
                            expected: str) -> None:
    result = classify(Reply.of(code, enhanced, text))

    assert result.cls == expected, (code, enhanced, text)
    assert result.cls in c.CLASSES
    assert result.explanation.endswith(".")
    assert result.explanation[0].isupper()
    assert "\n" not in result.explanation


def test_specific_code_beats_the_text() -> None:
    # The text talks of spam, but 5.1.1 says exactly what failed.
    reply = Reply.of(550, "5.1.1", "User unknown; spam trap")

    assert classify(reply).cls == c.BAD_MAILBOX


def test_text_beats_a_generic_code() -> None:
    assert classify(Reply.of(550, "5.7.1", "Relaying denied")).cls == c.POLICY
    assert classify(Reply.of(550, "5.7.1", "Listed in Spamhaus")).cls == (
        c.SPAM_BLOCKED)
    assert classify(Reply.of(451, "4.7.1", "Greylisted")).cls == c.GREYLISTED


def test_generic_code_default_when_the_text_is_silent() -> None:
    assert classify(Reply.of(421, "4.7.0", "Go away")).cls == c.RATE_LIMITED
    assert classify(Reply.of(550, "5.7.1", "Go away")).cls == c.POLICY
    assert classify(Reply.of(550, "5.7.999", "Go away")).cls == c.POLICY
    assert classify(Reply.of(451, "4.4.0", "Go away")).cls == c.NETWORK


def test_permanent_4_4_1_is_not_a_network_failure() -> None:
    assert classify(Reply.of(550, "5.4.1", "Go away")).cls == c.OTHER


def test_enhanced_code_found_at_the_start_of_the_text() -> None:
    # A parser that did not split the enhanced code off its text.
    reply = Reply.of(452, "", "4.2.2 Over the limit")

    assert classify(reply).cls == c.MAILBOX_FULL


def test_explanation_reuses_explain_for_the_deciding_code() -> None:
    result = classify(Reply.of(550, "5.1.1", "No such user"))

    assert isinstance(result, Classification)
    assert "does not exist" in result.explanation
    assert "typos" in result.explanation


def test_explanation_by_class_when_the_text_decided() -> None:
    result = classify(Reply.of(451, "4.7.1", "Greylisted"))

    assert "greylisting" in result.explanation


def test_positive_reply_is_other() -> None:
    assert classify(Reply.of(250, "2.0.0", "Ok")).cls == c.OTHER


def test_every_class_has_a_case() -> None:
    assert {row[3] for row in CASES} == set(c.CLASSES)
