"""What Mail Send puts in the queue: one MIME message per
personalization, read back from the spool with ``QueueStore``."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from typing import Any

import pytest

from postroom.mailbox.recipients import UNKNOWN_USER
from postroom.protocol.smtp.replies import Reply
from postroom.queue.envelope import Recipient
from postroom.server.policy import RelayPolicy
from postroom.store import queue as tables
from postroom.testing.api import NOW, PDF, PNG, Api, b64, minimal
from postroom.testing.process import split_received

SEND = "/v3/mail/send"


async def send(api: Api, body: dict[str, Any], status: int = 202) -> str:
    key = api.make_key()
    response = await api.client.post(SEND, json=body, headers=api.headers(key))
    assert response.status_code == status, response.text
    return response.headers.get("x-message-id", "")


def parse(content: bytes) -> EmailMessage:
    message = email.message_from_bytes(content, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


async def test_plain_message_is_queued_with_its_envelope(api: Api) -> None:
    message_id = await send(api, minimal())
    [info] = api.queue.list_messages()
    assert info.queue_id == message_id
    envelope, _ = api.queue.get(message_id)
    assert envelope.sender == "app@sender.test"
    assert [r.address for r in envelope.recipients] == ["ann@example.net"]
    assert envelope.auth_user is not None
    assert envelope.auth_user.startswith("apikey:")
    assert envelope.listener == "http:8025"
    assert envelope.client_address == "127.0.0.1"
    assert envelope.body == "7BIT" and not envelope.smtputf8
    assert info.recipients[0].next_attempt == pytest.approx(NOW)

    content = api.queue.read_content(message_id)
    received, rest = split_received(content)
    assert b"with HTTP id " + message_id.encode() in received
    assert b"\n" not in content.replace(b"\r\n", b"")  # CRLF only
    assert content.isascii()
    message = parse(rest)
    assert message["Message-ID"] == f"<{message_id}@mx.postroom.test>"
    assert message["Date"] is not None
    assert message["MIME-Version"] == "1.0"
    assert str(message["From"]) == "The App <app@sender.test>"
    assert str(message["To"]) == "ann@example.net"
    assert message["Subject"] == "Hello"
    assert message.get_content_type() == "text/plain"
    assert message.get_content().strip() == "Hi there"


async def test_text_and_html_make_an_alternative(api: Api) -> None:
    await send(api, minimal(content=[
        {"type": "text/plain", "value": "Grüße, ünïcödé"},
        {"type": "text/html", "value": "<p>Grüße</p>"},
    ]))
    [info] = api.queue.list_messages()
    content = api.queue.read_content(info.queue_id)
    assert content.isascii()  # quoted-printable or base64, never 8-bit
    message = parse(content)
    assert message.get_content_type() == "multipart/alternative"
    plain, html = message.iter_parts()
    assert plain.get_content_type() == "text/plain"
    assert html.get_content_type() == "text/html"
    assert plain.get_content().strip() == "Grüße, ünïcödé"
    assert "Grüße" in html.get_content()


async def test_attachments_and_inline_images(api: Api) -> None:
    await send(api, minimal(
        content=[
            {"type": "text/plain", "value": "see the logo"},
            {"type": "text/html", "value": '<img src="cid:logo">'},
        ],
        attachments=[
            {"content": b64(PNG), "filename": "logo.png", "type": "image/png",
             "disposition": "inline", "content_id": "logo"},
            {"content": b64(PDF), "filename": "terms.pdf",
             "type": "application/pdf"},
        ],
    ))
    [info] = api.queue.list_messages()
    message = parse(api.queue.read_content(info.queue_id))
    # mixed( alternative( plain, related( html, png ) ), pdf )
    assert message.get_content_type() == "multipart/mixed"
    body, pdf = message.iter_parts()
    assert body.get_content_type() == "multipart/alternative"
    plain, related = body.iter_parts()
    assert plain.get_content_type() == "text/plain"
    assert related.get_content_type() == "multipart/related"
    html, png = related.iter_parts()
    assert html.get_content_type() == "text/html"
    assert png["Content-ID"] == "<logo>"
    assert png.get_content_disposition() == "inline"
    assert png.get_content() == PNG
    assert pdf.get_content_type() == "application/pdf"
    assert pdf.get_filename() == "terms.pdf"
    assert pdf.get_content_disposition() == "attachment"
    assert pdf.get_content() == PDF
    assert all(p["MIME-Version"] is None for p in message.walk() if p is not message)


async def test_one_message_per_personalization(api: Api) -> None:
    request_id = await send(api, minimal(
        personalizations=[
            {"to": [{"email": "a@example.net", "name": "A"}],
             "cc": [{"email": "c@example.net"}],
             "bcc": [{"email": "hidden@example.net"}],
             "subject": "For A -first-",
             "substitutions": {"-first-": "Ann"},
             "headers": {"X-Campaign": "a"},
             "custom_args": {"user": "1"}},
            {"to": [{"email": "b@example.net"}],
             "substitutions": {"-first-": "Bob"}},
        ],
        subject="Hi -first-",
        content=[{"type": "text/plain", "value": "Dear -first-,"}],
        headers={"X-Campaign": "global", "X-Other": "o"},
        custom_args={"user": "0", "app": "x"},
        categories=["welcome"],
        batch_id="batch-1",
        tracking_settings={"open_tracking": {"enable": True}},
    ))
    first, second = api.queue.list_messages()
    assert first.queue_id == request_id
    env_a, _ = api.queue.get(first.queue_id)
    env_b, _ = api.queue.get(second.queue_id)
    assert [r.address for r in env_a.recipients] == [
        "a@example.net", "c@example.net", "hidden@example.net"]
    assert [r.address for r in env_b.recipients] == ["b@example.net"]

    a = parse(api.queue.read_content(first.queue_id))
    assert a["Subject"] == "For A Ann"
    assert str(a["Cc"]) == "c@example.net"
    assert a["Bcc"] is None and b"hidden@" not in bytes(a)
    assert a["X-Campaign"] == "a" and a["X-Other"] == "o"
    assert a.get_content().strip() == "Dear Ann,"
    b = parse(api.queue.read_content(second.queue_id))
    assert b["Subject"] == "Hi Bob"
    assert b["X-Campaign"] == "global"

    # What delivery does not act on yet is kept with the message.
    assert env_a.api is not None and env_b.api is not None
    assert env_a.api["request"] == env_b.api["request"] == request_id
    assert env_a.api["custom_args"] == {"user": "1", "app": "x"}
    assert env_b.api["custom_args"] == {"user": "0", "app": "x"}
    assert env_a.api["categories"] == ["welcome"]
    assert env_a.api["batch_id"] == "batch-1"
    assert env_a.api["tracking_settings"] == {"open_tracking": {"enable": True}}
    assert (env_a.api["personalization"], env_b.api["personalization"]) == (0, 1)


async def test_own_message_id_is_kept(api: Api) -> None:
    queue_id = await send(api, minimal(headers={"Message-ID": "<mine@app.test>"}))
    message = parse(api.queue.read_content(queue_id))
    assert message.get_all("Message-ID") == ["<mine@app.test>"]


async def test_reply_to_and_personalization_from(api: Api) -> None:
    queue_id = await send(api, minimal(
        personalizations=[{"to": [{"email": "a@example.net"}],
                           "from": {"email": "other@sender.test"}}],
        reply_to={"email": "help@sender.test", "name": "Help Desk"},
    ))
    envelope, _ = api.queue.get(queue_id)
    assert envelope.sender == "other@sender.test"
    message = parse(api.queue.read_content(queue_id))
    assert str(message["From"]) == "other@sender.test"
    assert str(message["Reply-To"]) == "Help Desk <help@sender.test>"


async def test_utf8_local_part_makes_an_smtputf8_message(api: Api) -> None:
    queue_id = await send(api, minimal(
        personalizations=[{"to": [{"email": "josé@example.net"}]}]))
    envelope, _ = api.queue.get(queue_id)
    assert envelope.smtputf8
    assert "josé@example.net".encode() in api.queue.read_content(queue_id)


async def test_sandbox_mode_validates_and_queues_nothing(api: Api) -> None:
    body = minimal(mail_settings={"sandbox_mode": {"enable": True}})
    key = api.make_key()
    response = await api.client.post(SEND, json=body, headers=api.headers(key))
    assert response.status_code == 200
    assert response.content == b""
    assert api.queue.list_messages() == []
    # Still validated in full.
    body["personalizations"][0]["to"][0]["email"] = "broken"
    response = await api.client.post(SEND, json=body, headers=api.headers(key))
    assert response.status_code == 400


async def test_send_at_holds_the_recipients_until_then(api: Api) -> None:
    later = int(NOW) + 3600
    queue_id = await send(api, minimal(send_at=later))
    envelope, info = api.queue.get(queue_id)
    assert envelope.not_before == later
    assert [r.next_attempt for r in info.recipients] == [later]
    assert info.recipients[0].state == tables.QUEUED
    message = parse(api.queue.read_content(queue_id))
    # Dated when it goes out.
    assert message["Date"].datetime.timestamp() == later


async def test_personalization_send_at_wins_and_past_means_now(api: Api) -> None:
    await send(api, minimal(
        personalizations=[
            {"to": [{"email": "a@example.net"}], "send_at": int(NOW) + 60},
            {"to": [{"email": "b@example.net"}], "send_at": 1},
        ],
        send_at=int(NOW) + 7200,
    ))
    first, second = api.queue.list_messages()
    assert first.recipients[0].next_attempt == NOW + 60
    assert second.recipients[0].next_attempt == pytest.approx(NOW)


@pytest.mark.http(local_domains=["postroom.test"])
async def test_local_recipients_are_accepted_without_a_user_table(api: Api) -> None:
    # Without LocalRecipients every local address is accepted (as the
    # SMTP policy does in tests of the session alone).
    await send(api, minimal(personalizations=[{"to": [{"email": "x@postroom.test"}]}]))


async def test_message_larger_than_smtp_limit_is_413(api: Api) -> None:
    api.context.config.smtp.max_message_size = 2000
    body = minimal(attachments=[{"content": b64(PDF * 10), "filename": "big.pdf"}])
    await send(api, body, status=413)
    assert api.queue.list_messages() == []


class _Recipients:
    """Stands in for LocalRecipients: one unknown user, one alias."""

    def check_rcpt(self, address: str) -> Reply | None:
        return UNKNOWN_USER if address.startswith("nobody@") else None

    def expand(self, recipients: list[Recipient]) -> list[Recipient]:
        out = []
        for r in recipients:
            if r.address == "team@postroom.test":
                out += [Recipient("ann@postroom.test", orcpt=f"rfc822;{r.address}"),
                        Recipient("bob@postroom.test", orcpt=f"rfc822;{r.address}")]
            else:
                out.append(r)
        return out


async def test_local_recipients_follow_the_smtp_policy(api: Api) -> None:
    api.context.policy = RelayPolicy(
        ["postroom.test"], [], recipients=_Recipients())  # type: ignore[arg-type]
    key = api.make_key()
    refused = await api.client.post(SEND, headers=api.headers(key), json=minimal(
        personalizations=[{"to": [{"email": "team@postroom.test"}],
                           "cc": [{"email": "nobody@postroom.test"}]}]))
    assert refused.status_code == 400
    [error] = refused.json()["errors"]
    assert error["field"] == "personalizations.0.cc.0.email"
    assert "unknown user" in error["message"]

    queue_id = await send(api, minimal(
        personalizations=[{"to": [{"email": "team@postroom.test"}]}]))
    envelope, _ = api.queue.get(queue_id)
    assert [(r.address, r.orcpt) for r in envelope.recipients] == [
        ("ann@postroom.test", "rfc822;team@postroom.test"),
        ("bob@postroom.test", "rfc822;team@postroom.test"),
    ]
