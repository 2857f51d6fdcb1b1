"""Delivery status notifications (postroom.delivery.dsn), read back with
the standard library's parser the way a mail client would read them."""

from __future__ import annotations

import email.policy
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser, BytesParser
from typing import Any

import pytest

from postroom.delivery import dsn
from postroom.delivery.dsn import DsnRecipient
from postroom.protocol.smtp.replies import Reply
from postroom.queue.envelope import Envelope, Recipient

RECEIVED = 1_800_000_000.0
NOW = RECEIVED + 600
REPORTING = "mx.sender.test"
USER_UNKNOWN = Reply.of(550, "5.1.1", "The email account that you tried to "
                        "reach does not exist")
REFUSED = Reply.of(451, "4.4.1", "connect to mx.dest.test[192.0.2.1]:25: "
                   "Connection refused")
ORIGINAL = (
    b"From: Alice <alice@sender.test>\r\n"
    b"To: Bob <bob@dest.test>\r\n"
    b"Subject: Quarterly figures\r\n"
    b"Message-ID: <q3@sender.test>\r\n"
    b"\r\n"
    b"Hi Bob,\r\n"
    b".\r\n"
    b"the figures are attached.\r\n"
)


def envelope(**fields: Any) -> Envelope:
    fields.setdefault("sender", "alice@sender.test")
    return Envelope(queue_id="7Q3K9ZJ2PM", received_at=RECEIVED,
                    recipients=[Recipient("bob@dest.test")], **fields)


def failed(address: str = "bob@dest.test", reply: Reply = USER_UNKNOWN,
           **fields: Any) -> DsnRecipient:
    values: dict[str, Any] = dict(
        address=address, orcpt=None, action=dsn.FAILED, status="5.1.1",
        reply=reply, remote_mta="mx1.dest.test", last_attempt=NOW - 5,
        will_retry_until=None)
    values.update(fields)
    return DsnRecipient(**values)


def build(env: Envelope | None = None, content: bytes = ORIGINAL,
          recipients: list[DsnRecipient] | None = None,
          kind: str = dsn.FAILURE, **options: Any) -> bytes:
    return dsn.build_dsn(
        envelope=env or envelope(), content=content,
        recipients=recipients or [failed()], reporting_mta=REPORTING,
        kind=kind, now=NOW, **options)


def parse(raw: bytes) -> EmailMessage:
    message = BytesParser(policy=email.policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


def parts(message: EmailMessage) -> list[Message]:
    payload = message.get_payload()
    assert isinstance(payload, list)
    return payload


def status_blocks(message: EmailMessage) -> list[Message]:
    part = parts(message)[1]
    assert part.get_content_type() == "message/delivery-status"
    blocks = part.get_payload()
    assert isinstance(blocks, list)
    return blocks


def text_of(message: EmailMessage) -> str:
    part = parts(message)[0]
    assert isinstance(part, EmailMessage)
    return str(part.get_content())


# -- structure ------------------------------------------------------------


def test_failure_report_structure() -> None:
    raw = build(queue_id_for_headers="7Q3K9ZJ2PM")
    message = parse(raw)

    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert [p.get_content_type() for p in parts(message)] == [
        "text/plain", "message/delivery-status", "message/rfc822"]
    assert message["From"].addresses[0].addr_spec == (
        "MAILER-DAEMON@mx.sender.test")
    assert message["From"].addresses[0].display_name == "Mail Delivery System"
    assert message["To"] == "alice@sender.test"
    assert message["Subject"] == "Undelivered Mail Returned to Sender"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["Message-ID"].endswith("@mx.sender.test>")
    assert "7Q3K9ZJ2PM" in message["Message-ID"]
    assert message["Date"].datetime.timestamp() == NOW
    assert not message.defects


def test_output_has_only_crlf_line_ends() -> None:
    raw = build(content=ORIGINAL.replace(b"\r\n", b"\n"))

    assert b"\r\n" in raw
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")


def test_per_message_fields() -> None:
    message = parse(build(envelope(envid="ENV-42"),
                          queue_id_for_headers="7Q3K9ZJ2PM"))
    head = status_blocks(message)[0]

    assert head["Reporting-MTA"] == "dns; mx.sender.test"
    assert head["Original-Envelope-Id"] == "ENV-42"
    assert head["X-Postroom-Queue-ID"] == "7Q3K9ZJ2PM"
    assert "2027" in head["Arrival-Date"]


def test_no_envelope_id_field_without_envid() -> None:
    head = status_blocks(parse(build()))[0]

    assert head["Original-Envelope-Id"] is None


def test_per_recipient_fields() -> None:
    message = parse(build(recipients=[failed(orcpt="rfc822;Bob@dest.test")]))
    block = status_blocks(message)[1]

    assert block["Original-Recipient"] == "rfc822;Bob@dest.test"
    assert block["Final-Recipient"] == "rfc822; bob@dest.test"
    assert block["Action"] == "failed"
    assert block["Status"] == "5.1.1"
    assert block["Remote-MTA"] == "dns; mx1.dest.test"
    assert block["Diagnostic-Code"] == (
        "smtp; 550 5.1.1 The email account that you tried to reach does "
        "not exist")
    assert block["Last-Attempt-Date"]
    assert block["Will-Retry-Until"] is None


def test_one_block_per_recipient() -> None:
    recipients = [failed("bob@dest.test"), failed("carol@dest.test")]
    blocks = status_blocks(parse(build(recipients=recipients)))

    assert [b["Final-Recipient"] for b in blocks[1:]] == [
        "rfc822; bob@dest.test", "rfc822; carol@dest.test"]


def test_multi_line_reply_becomes_one_diagnostic_line() -> None:
    reply = Reply.of(550, "5.7.1", "Message rejected.", "See the help page.")
    block = status_blocks(parse(build(recipients=[failed(reply=reply)])))[1]

    assert block["Diagnostic-Code"] == (
        "smtp; 550 5.7.1 Message rejected. See the help page.")


def test_without_reply_or_remote_mta() -> None:
    recipient = failed(reply=None, remote_mta=None, status="5.4.4")
    block = status_blocks(parse(build(recipients=[recipient])))[1]

    assert block["Diagnostic-Code"] is None
    assert block["Remote-MTA"] is None
    assert block["Status"] == "5.4.4"


@pytest.mark.parametrize(("action", "expected"), [
    (dsn.FAILED, "5.0.0"), (dsn.DELAYED, "4.0.0"), (dsn.DELIVERED, "2.0.0")])
def test_missing_status_is_derived_from_the_action(action: str,
                                                   expected: str) -> None:
    block = status_blocks(parse(build(
        recipients=[failed(action=action, status="")])))[1]

    assert block["Status"] == expected


def test_orcpt_with_line_break_cannot_add_fields() -> None:
    # ORCPT is xtext on the wire, so a client can smuggle CR LF in it.
    recipient = failed(orcpt="rfc822;bob@dest.test\r\nAction: delivered")
    raw = build(recipients=[recipient])
    block = status_blocks(parse(raw))[1]

    assert block["Action"] == "failed"
    assert block.get_all("Action") == ["failed"]
    assert b"\r\nAction: delivered" not in raw


# -- the human part ---------------------------------------------------------


def test_text_explains_each_failure() -> None:
    text = text_of(parse(build()))

    assert "mx.sender.test" in text
    assert "<bob@dest.test>: delivery failed" in text
    assert "mx1.dest.test said: 550 5.1.1" in text
    assert "does not exist" in text
    assert "Quarterly figures" in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_delay_text_says_until_when() -> None:
    recipient = failed(action=dsn.DELAYED, status="4.4.1", reply=REFUSED,
                       will_retry_until=RECEIVED + 5 * 86400)
    message = parse(build(recipients=[recipient], kind=dsn.DELAY))
    text = text_of(message)
    block = status_blocks(message)[1]

    assert message["Subject"] == "Delayed Mail (still being retried)"
    assert "still trying" in text
    assert "could not be reached" in text or "did not answer" in text
    assert "2027" in block["Will-Retry-Until"]
    assert block["Action"] == "delayed"


def test_success_report() -> None:
    recipient = failed(action=dsn.DELIVERED, status="2.0.0",
                       reply=Reply.of(250, "2.0.0", "Ok: queued as 4Xy"))
    message = parse(build(recipients=[recipient], kind=dsn.SUCCESS))

    assert message["Subject"] == "Successful Mail Delivery Report"
    assert "<bob@dest.test>: delivered" in text_of(message)
    assert status_blocks(message)[1]["Action"] == "delivered"


# -- the returned message ---------------------------------------------------


def test_failure_returns_the_full_message_by_default() -> None:
    raw = build()
    returned = parts(parse(raw))[2]

    assert returned.get_content_type() == "message/rfc822"
    inner = returned.get_payload()[0]
    assert isinstance(inner, Message)
    assert inner["Subject"] == "Quarterly figures"
    # Byte for byte, dot line included.
    assert ORIGINAL in raw


def test_ret_full_returns_the_full_message() -> None:
    raw = build(envelope(ret="FULL"))

    assert parts(parse(raw))[2].get_content_type() == "message/rfc822"
    assert ORIGINAL in raw


def test_ret_hdrs_returns_the_header_only() -> None:
    raw = build(envelope(ret="HDRS"))
    returned = parts(parse(raw))[2]

    assert returned.get_content_type() == "text/rfc822-headers"
    assert "Subject: Quarterly figures" in returned.get_payload()
    assert b"the figures are attached" not in raw


@pytest.mark.parametrize(("kind", "action"), [
    (dsn.DELAY, dsn.DELAYED), (dsn.SUCCESS, dsn.DELIVERED)])
def test_delay_and_success_return_headers_only(kind: str, action: str) -> None:
    raw = build(envelope(ret="FULL"), kind=kind,
                recipients=[failed(action=action, status="")])

    assert parts(parse(raw))[2].get_content_type() == "text/rfc822-headers"
    assert b"the figures are attached" not in raw


def test_large_message_comes_back_as_header_only() -> None:
    raw = build(full_return_limit=len(ORIGINAL) - 1)

    assert parts(parse(raw))[2].get_content_type() == "text/rfc822-headers"


def test_binarymime_message_comes_back_as_header_only() -> None:
    raw = build(envelope(body="BINARYMIME"), content=ORIGINAL + b"\0\xff")

    assert parts(parse(raw))[2].get_content_type() == "text/rfc822-headers"
    assert b"\0" not in raw


def test_eight_bit_original_is_returned_unchanged() -> None:
    content = ("Subject: Grüße\r\n\r\nDie Zahlen: 3 €\r\n").encode()
    raw = build(envelope(body="8BITMIME"), content=content)
    returned = parts(parse(raw))[2]

    assert returned.get_content_type() == "message/rfc822"
    assert returned["Content-Transfer-Encoding"] == "8bit"
    assert content in raw
    # The notice's own parts stay 7-bit: only the original needs 8BITMIME.
    assert parse(raw)["Subject"].isascii()


def test_ascii_original_gives_an_ascii_notice() -> None:
    assert build().isascii()


def test_message_without_body_separator() -> None:
    raw = build(envelope(ret="HDRS"), content=b"Subject: only a header\r\n")

    assert "only a header" in parts(parse(raw))[2].get_payload()


# -- SMTPUTF8 (RFC 6533) ------------------------------------------------------


def _global_status_blocks(raw: bytes) -> list[Message]:
    # The stdlib parser has no special case for the global type, so cut
    # the part out of the raw notice and read its blocks as headers.
    start = raw.index(b"Content-Type: message/global-delivery-status")
    body = raw[raw.index(b"\r\n\r\n", start) + 4:]
    body = body[: body.index(b"\r\n--")]
    parser = BytesHeaderParser(policy=email.policy.default)
    return [parser.parsebytes(block) for block in body.split(b"\r\n\r\n")
            if block.strip()]


def test_utf8_original_uses_the_global_types() -> None:
    content = "From: jörg@sender.test\r\nSubject: Grüße\r\n\r\nHallo\r\n"
    env = envelope(sender="jörg@sender.test", smtputf8=True)
    recipient = failed("zoë@dest.test", orcpt="utf-8;zoë@dest.test")
    raw = build(env, content=content.encode(), recipients=[recipient])
    message = parse(raw)

    assert [p.get_content_type() for p in parts(message)] == [
        "text/plain", "message/global-delivery-status", "message/global"]
    assert message["To"] == "jörg@sender.test"
    assert content.encode() in raw
    blocks = _global_status_blocks(raw)
    assert blocks[0]["Reporting-MTA"] == "dns; mx.sender.test"
    assert blocks[1]["Final-Recipient"] == "utf-8; zoë@dest.test"
    assert blocks[1]["Original-Recipient"] == "utf-8;zoë@dest.test"
    assert blocks[1]["Status"] == "5.1.1"
    assert "zoë@dest.test" in text_of(message)


def test_utf8_original_headers_only() -> None:
    content = "Subject: Grüße\r\n\r\nHallo\r\n".encode()
    raw = build(envelope(smtputf8=True, ret="HDRS"), content=content)

    assert parts(parse(raw))[2].get_content_type() == "message/global-headers"
    assert "Grüße".encode() in raw
    assert b"Hallo" not in raw


# -- who gets a notice --------------------------------------------------------


def test_null_sender_gets_no_notice() -> None:
    env = envelope(sender="")

    assert dsn.dsn_recipient_address(env) is None
    with pytest.raises(ValueError, match="null sender"):
        build(env)


def test_notice_goes_to_the_envelope_sender() -> None:
    assert dsn.dsn_recipient_address(envelope()) == "alice@sender.test"


def test_unknown_kind_action_and_empty_recipients_are_refused() -> None:
    with pytest.raises(ValueError):
        build(kind="bounce")
    with pytest.raises(ValueError):
        build(recipients=[failed(action="bounced")])
    with pytest.raises(ValueError):
        dsn.build_dsn(envelope=envelope(), content=ORIGINAL, recipients=[],
                      reporting_mta=REPORTING, kind=dsn.FAILURE, now=NOW)


@pytest.mark.parametrize(("notify", "kind", "expected"), [
    (None, dsn.FAILURE, True),
    (None, dsn.DELAY, True),
    (None, dsn.SUCCESS, False),
    ((), dsn.FAILURE, False),
    ((), dsn.DELAY, False),
    ((), dsn.SUCCESS, False),
    (("SUCCESS",), dsn.SUCCESS, True),
    (("SUCCESS",), dsn.FAILURE, False),
    (("FAILURE",), dsn.FAILURE, True),
    (("FAILURE",), dsn.DELAY, False),
    (("FAILURE", "DELAY"), dsn.DELAY, True),
    (("SUCCESS", "FAILURE", "DELAY"), dsn.SUCCESS, True),
])
def test_should_notify(notify: tuple[str, ...] | None, kind: str,
                       expected: bool) -> None:
    recipient = Recipient("bob@dest.test", notify=notify)

    assert dsn.should_notify(recipient, kind) is expected
