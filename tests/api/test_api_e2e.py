"""The API end to end: a real ``postroom serve`` with the HTTP API on,
SendGrid's official Python library pointed at it, and delivery to the
fake providers of the seed story's stage. Also SMTP submission with an
API key as the password of user ``apikey``, as SendGrid's relay takes.
"""

from __future__ import annotations

import base64
import email
import email.policy
import smtplib
import time
from collections.abc import Callable, Iterator

import pytest
from python_http_client import exceptions as http_errors
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import (
    Attachment,
    ContentId,
    Disposition,
    FileContent,
    FileName,
    FileType,
    Mail,
)

from postroom.testing.process import KINDS, LOOPBACK, PostroomProcess
from postroom.testing.providers import FakeProvider
from postroom.testing.stage import ORGANISER, Stage, open_stage, wait_until

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(32))


@pytest.fixture
def stage() -> Iterator[Stage]:
    with open_stage() as opened:
        yield opened


def delivered(provider: FakeProvider) -> list[tuple[str, bytes]]:
    return [(r, t.data) for t in provider.transactions if t.accepted
            for r in t.recipients]


def api_node(
    stage: Stage, factory: Callable[..., PostroomProcess], workers: int = 1
) -> tuple[PostroomProcess, str]:
    """A node with the API on; and a key made with the CLI."""
    settings = stage.settings()
    settings["smtp"] = {"workers": workers}
    node = factory(settings, start=False, kinds=(*KINDS, "http"))
    made = node.cli("apikey", "create", "e2e", "--scope", "mail.send")
    assert made.returncode == 0, made.stderr
    node.start()
    return node, made.stdout.strip()


@pytest.mark.parametrize("workers", [1, 2])
def test_sendgrid_library_sends_mail_that_is_delivered(
    stage: Stage, postroom_factory: Callable[..., PostroomProcess], workers: int
) -> None:
    node, key = api_node(stage, postroom_factory, workers)
    client = SendGridAPIClient(api_key=key, host=node.http_url)

    mail = Mail(
        from_email=(ORGANISER, "Lumen Events"),
        to_emails=["client01@gmail.test", "client02@outlook.test"],
        subject="You are invited",
        plain_text_content="Please join us on 18 December.",
        html_content='<p>Please join us.</p><img src="cid:logo">',
    )
    mail.attachment = Attachment(
        FileContent(base64.b64encode(PNG).decode()), FileName("logo.png"),
        FileType("image/png"), Disposition("inline"), ContentId("logo"))
    response = client.send(mail)
    assert response.status_code == 202
    request_id = response.headers["X-Message-Id"]
    assert request_id

    gmail, outlook = stage.providers["gmail.test"], stage.providers["outlook.test"]
    wait_until(lambda: len(delivered(gmail)) == 1 and len(delivered(outlook)) == 1)
    [(rcpt, data)] = delivered(gmail)
    assert rcpt == "client01@gmail.test"
    assert gmail.transactions[0].sender == ORGANISER
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert message["Subject"] == "You are invited"
    assert message["Message-ID"] == f"<{request_id}@mx.postroom.test>"
    assert message.get_content_type() == "multipart/alternative"
    html = message.get_body(("html",))
    assert html is not None
    assert any(p["Content-ID"] == "<logo>" for p in message.walk())

    lines = node.log_events("received")
    assert any(ln.startswith(f"{request_id}: received") and "proto=HTTP" in ln
               for ln in lines)
    wait_until(lambda: len(node.log_events("delivered")) == 2)


def test_library_sees_sendgrid_shaped_errors(
    stage: Stage, postroom_factory: Callable[..., PostroomProcess]
) -> None:
    node, key = api_node(stage, postroom_factory)
    client = SendGridAPIClient(api_key=key, host=node.http_url)
    # The library checks addresses itself, so the bad one goes as JSON.
    bad = Mail(from_email=ORGANISER, to_emails="someone@gmail.test",
               subject="x", plain_text_content="x").get()
    bad["personalizations"][0]["to"][0]["email"] = "not-an-address"
    with pytest.raises(http_errors.BadRequestsError) as caught:
        client.send(bad)
    body = caught.value.to_dict
    assert body["errors"][0]["field"] == "personalizations.0.to.0.email"

    stranger = SendGridAPIClient(api_key="SG.nobody.nothing", host=node.http_url)
    with pytest.raises(http_errors.UnauthorizedError):
        stranger.send(Mail(from_email=ORGANISER, to_emails="a@gmail.test",
                           subject="x", plain_text_content="x"))


def test_send_at_is_held_until_its_time(
    stage: Stage, postroom_factory: Callable[..., PostroomProcess]
) -> None:
    node, key = api_node(stage, postroom_factory)
    client = SendGridAPIClient(api_key=key, host=node.http_url)
    mail = Mail(from_email=ORGANISER, to_emails="later@hotmail.test",
                subject="Later", plain_text_content="Scheduled.")
    due = int(time.time()) + 3
    mail.send_at = due
    assert client.send(mail).status_code == 202
    hotmail = stage.providers["hotmail.test"]
    time.sleep(1.0)
    assert delivered(hotmail) == []
    wait_until(lambda: len(delivered(hotmail)) == 1, timeout=20)
    assert time.time() >= due


def test_smtp_auth_with_an_api_key(
    stage: Stage, postroom_factory: Callable[..., PostroomProcess]
) -> None:
    node, key = api_node(stage, postroom_factory)
    content = (
        f"From: {ORGANISER}\r\nTo: client03@hotmail.test\r\n"
        "Subject: via SMTP\r\n\r\nHello over SMTP.\r\n"
    )
    with smtplib.SMTP(LOOPBACK, node.submission_port, timeout=10) as smtp:
        smtp.starttls(context=node.client_context())
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.login("apikey", key[:-2] + "xx")
    with smtplib.SMTP(LOOPBACK, node.submission_port, timeout=10) as smtp:
        smtp.starttls(context=node.client_context())
        smtp.login("apikey", key)
        smtp.sendmail(ORGANISER, ["client03@hotmail.test"], content)
    hotmail = stage.providers["hotmail.test"]
    wait_until(lambda: len(delivered(hotmail)) == 1)
    [(_, data)] = delivered(hotmail)
    assert data.endswith(b"Hello over SMTP.\r\n")
    assert any("user=apikey" in ln and "result=ok" in ln
               for ln in node.log_events("auth"))

    # A revoked key no longer logs in.
    key_id = key.split(".")[1]
    assert node.cli("apikey", "revoke", key_id).returncode == 0
    with smtplib.SMTP(LOOPBACK, node.submission_port, timeout=10) as smtp:
        smtp.starttls(context=node.client_context())
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.login("apikey", key)


def test_http_is_off_unless_asked(
    postroom_factory: Callable[..., PostroomProcess],
) -> None:
    node = postroom_factory()
    assert "http" not in node.ports
    assert "http " not in node.log_text()
