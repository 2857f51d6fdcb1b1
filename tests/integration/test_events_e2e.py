"""Events and webhooks end to end: a real ``postroom serve`` takes mail
over SMTP and the HTTP API, delivers it to the stage's fake providers,
and posts the events to a webhook receiver the test runs on loopback.
A hard bounce
puts the address on the bounce list, and the next API send to it is
dropped. Then a replay posts everything again."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from postroom.testing.process import KINDS, PostroomProcess
from postroom.testing.providers import USER_UNKNOWN
from postroom.testing.stage import INVITATION, ORGANISER, Stage, open_stage, send
from postroom.testing.webhooks import WebhookReceiver
from postroom.webhooks import signing


@pytest.fixture
def stage() -> Iterator[Stage]:
    with open_stage() as opened:
        yield opened


def kinds_by_email(received: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(e["email"], e["event"]) for e in received}


# One worker: the engine and the sender run in it; two: in the
# delivery process, apart from the workers that accept.
@pytest.mark.parametrize("workers", [1, 2])
def test_smtp_and_api_mail_events_reach_a_signed_webhook(
    stage: Stage, postroom_factory: Callable[..., PostroomProcess], workers: int
) -> None:
    stage.providers["gmail.test"].update(reject={"nobody@gmail.test": USER_UNKNOWN})
    settings: dict[str, Any] = stage.settings()
    settings["smtp"] = {"workers": workers}
    settings["webhooks"] = {"poll_interval": 0.1, "retry_first": 0.2}
    node = postroom_factory(settings, start=False, kinds=(*KINDS, "http"))
    made = node.cli("apikey", "create", "e2e", "--scope", "mail.send")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()

    # The receiver fails the first post: the sender must try again.
    with WebhookReceiver(fail_first=[503]) as receiver:
        added = node.cli("webhook", "add", receiver.url)
        assert added.returncode == 0, added.stderr
        _hook_id, secret = added.stdout.split()
        node.start()

        # Over SMTP: one good recipient, one the provider refuses for good.
        queue_id = send(node, ["client00@gmail.test", "nobody@gmail.test"],
                        INVITATION)
        # Over the API, with a category and custom_args.
        api = httpx.Client(base_url=node.http_url,
                           headers={"Authorization": f"Bearer {key}"})
        body = {
            "personalizations": [{"to": [{"email": "client01@outlook.test"}]}],
            "from": {"email": ORGANISER},
            "subject": "Invitation",
            "content": [{"type": "text/plain", "value": "Come along."}],
            "categories": ["invite"],
            "custom_args": {"guest": "client01"},
        }
        sent = api.post("/v3/mail/send", json=body)
        assert sent.status_code == 202, sent.text
        request_id = sent.headers["X-Message-Id"]

        wanted = {
            ("client00@gmail.test", "processed"),
            ("nobody@gmail.test", "processed"),
            ("client01@outlook.test", "processed"),
            ("client00@gmail.test", "delivered"),
            ("client01@outlook.test", "delivered"),
            ("nobody@gmail.test", "bounce"),
        }
        receiver.wait_for(lambda _: wanted <= kinds_by_email(receiver.accepted()))

        # The refused batch came again (more may have joined it).
        refused, retried = receiver.posts[0], receiver.posts[1]
        assert refused.status == 503
        assert retried.events()[0]["sg_event_id"] == (
            refused.events()[0]["sg_event_id"]
        )
        # Every post is signed with the endpoint's secret.
        for post in receiver.posts:
            assert signing.verify(
                secret,
                post.headers[signing.TIMESTAMP_HEADER],
                post.body,
                post.headers[signing.SIGNATURE_HEADER],
            )
        received = receiver.accepted()
        smtp_ids = {e["sg_message_id"] for e in received
                    if e["email"] == "client00@gmail.test"}
        assert smtp_ids == {f"{queue_id}.{queue_id}.0"}
        api_events = [e for e in received if e["email"] == "client01@outlook.test"]
        assert all(e["sg_message_id"].startswith(f"{request_id}.")
                   for e in api_events)
        assert all(e["category"] == ["invite"] and e["guest"] == "client01"
                   for e in api_events)
        [bounce] = [e for e in received if e["event"] == "bounce"]
        assert bounce["status"] == "5.1.1" and bounce["type"] == "bounce"

        # The hard bounce listed the address; the API now drops it.
        listed = node.cli("suppress", "list", "--kind", "bounce")
        assert "nobody@gmail.test" in listed.stdout
        body["personalizations"] = [{"to": [{"email": "nobody@gmail.test"}]}]
        assert api.post("/v3/mail/send", json=body).status_code == 202
        receiver.wait_for(
            lambda _: ("nobody@gmail.test", "dropped")
            in kinds_by_email(receiver.accepted())
        )
        api.close()

        # A replay of all time posts every event again, same ids.
        before = receiver.accepted()
        replay = node.cli("webhook", "replay", "--from", "0", "--to", "4000000000")
        assert replay.returncode == 0, replay.stderr
        receiver.wait_for(lambda _: len(receiver.accepted()) >= 2 * len(before))
        again = receiver.accepted()[len(before):]
        assert {e["sg_event_id"] for e in again} >= {
            e["sg_event_id"] for e in before
        }
    assert len(node.log_events("delivered")) >= 2
