"""Suppression lists over the API (SendGrid's shapes), the functions
contacts and campaigns call, and the drop of suppressed recipients at
Mail Send with its ``dropped`` event."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from postroom import suppressions
from postroom.api import keys
from postroom.testing.api import Api, minimal


def body_to(*addresses: str, **top: Any) -> dict[str, Any]:
    return minimal(
        personalizations=[{"to": [{"email": a} for a in addresses]}], **top
    )


async def test_bounce_list_add_list_show_delete(api: Api) -> None:
    h = api.headers(api.make_key(keys.SUPPRESSIONS))
    made = await api.client.post(
        "/v3/suppression/bounces", headers=h,
        json={"emails": ["Gone@Example.net", "old@example.net"]})
    assert made.status_code == 201, made.text
    assert made.json() == {"emails": ["gone@example.net", "old@example.net"]}

    listed = (await api.client.get("/v3/suppression/bounces", headers=h)).json()
    assert {e["email"] for e in listed} == {"gone@example.net", "old@example.net"}
    assert set(listed[0]) == {"created", "email", "reason", "status"}

    one = await api.client.get("/v3/suppression/bounces/gone@example.net", headers=h)
    assert [e["email"] for e in one.json()] == ["gone@example.net"]

    gone = await api.client.delete(
        "/v3/suppression/bounces/gone@example.net", headers=h)
    assert gone.status_code == 204
    again = await api.client.delete(
        "/v3/suppression/bounces/gone@example.net", headers=h)
    assert again.status_code == 404
    assert again.json()["errors"][0]["field"] == "email"

    cleared = await api.client.request(
        "DELETE", "/v3/suppression/bounces", headers=h, json={"delete_all": True})
    assert cleared.status_code == 204
    assert (await api.client.get("/v3/suppression/bounces", headers=h)).json() == []


async def test_other_lists_and_unknown_list(api: Api) -> None:
    h = api.headers(api.make_key(keys.SUPPRESSIONS))
    for name in ("spam_reports", "invalid_emails", "unsubscribes"):
        made = await api.client.post(
            f"/v3/suppression/{name}", headers=h, json={"emails": ["a@example.net"]})
        assert made.status_code == 201
        listed = await api.client.get(f"/v3/suppression/{name}", headers=h)
        assert [e["email"] for e in listed.json()] == ["a@example.net"]
    missing = await api.client.get("/v3/suppression/nonsense", headers=h)
    assert missing.status_code == 404


async def test_scope_is_required(api: Api) -> None:
    h = api.headers(api.make_key(keys.MAIL_SEND))
    for path in ("/v3/suppression/bounces", "/v3/asm/groups"):
        assert (await api.client.get(path, headers=h)).status_code == 403


async def test_groups_and_their_suppressions(api: Api) -> None:
    h = api.headers(api.make_key(keys.SUPPRESSIONS))
    made = await api.client.post(
        "/v3/asm/groups", headers=h,
        json={"name": "Newsletter", "description": "weekly", "is_default": True})
    assert made.status_code == 201, made.text
    group = made.json()
    assert group["name"] == "Newsletter" and group["is_default"] is True
    gid = group["id"]

    dup = await api.client.post(
        "/v3/asm/groups", headers=h, json={"name": "Newsletter"})
    assert dup.status_code == 400

    added = await api.client.post(
        f"/v3/asm/groups/{gid}/suppressions", headers=h,
        json={"recipient_emails": ["ann@example.net"]})
    assert added.status_code == 201
    assert added.json() == {"recipient_emails": ["ann@example.net"]}
    listed = await api.client.get(f"/v3/asm/groups/{gid}/suppressions", headers=h)
    assert listed.json() == ["ann@example.net"]
    groups = (await api.client.get("/v3/asm/groups", headers=h)).json()
    assert groups[0]["unsubscribes"] == 1

    changed = await api.client.patch(
        f"/v3/asm/groups/{gid}", headers=h, json={"description": "monthly"})
    assert changed.json()["description"] == "monthly"

    removed = await api.client.delete(
        f"/v3/asm/groups/{gid}/suppressions/ann@example.net", headers=h)
    assert removed.status_code == 204
    assert (await api.client.get(
        f"/v3/asm/groups/{gid}/suppressions", headers=h)).json() == []

    url = f"/v3/asm/groups/{gid}"
    assert (await api.client.delete(url, headers=h)).status_code == 204
    assert (await api.client.get(url, headers=h)).status_code == 404
    assert (await api.client.post(
        f"/v3/asm/groups/{gid}/suppressions", headers=h,
        json={"recipient_emails": ["x@example.net"]})).status_code == 404


async def test_global_unsubscribes(api: Api) -> None:
    h = api.headers(api.make_key(keys.SUPPRESSIONS))
    made = await api.client.post(
        "/v3/asm/suppressions/global", headers=h,
        json={"recipient_emails": ["bob@example.net"]})
    assert made.status_code == 201
    found = await api.client.get("/v3/asm/suppressions/global/BOB@example.net",
                                 headers=h)
    assert found.json() == {"recipient_email": "bob@example.net"}
    listed = await api.client.get("/v3/suppression/unsubscribes", headers=h)
    assert [e["email"] for e in listed.json()] == ["bob@example.net"]
    assert (await api.client.delete(
        "/v3/asm/suppressions/global/bob@example.net", headers=h)).status_code == 204
    none = await api.client.get("/v3/asm/suppressions/global/bob@example.net",
                                headers=h)
    assert none.json() == {}


def test_is_suppressed_and_the_bulk_lookup(api: Api) -> None:
    with api.engine.begin() as conn:
        group = suppressions.create_group(conn, "offers")
        suppressions.add(conn, suppressions.BOUNCE, ["b@example.net"])
        suppressions.add(conn, suppressions.SPAMREPORT, ["s@example.net"])
        suppressions.add(
            conn, suppressions.GROUP_UNSUBSCRIBE, ["g@example.net", "b@example.net"],
            group_id=group.id,
        )
    with api.engine.connect() as conn:
        assert suppressions.is_suppressed(conn, "B@example.net")
        assert not suppressions.is_suppressed(conn, "g@example.net")
        assert suppressions.is_suppressed(conn, "g@example.net", group.id)
        assert not suppressions.is_suppressed(conn, "g@example.net", group.id + 1)
        many = [f"u{i}@example.net" for i in range(1200)]
        found = suppressions.suppressed(
            conn, [*many, "b@example.net", "s@example.net", "g@example.net"], group.id
        )
    # A global list wins over the group's for the reason given.
    assert found == {
        "b@example.net": suppressions.BOUNCE,
        "s@example.net": suppressions.SPAMREPORT,
        "g@example.net": suppressions.GROUP_UNSUBSCRIBE,
    }


async def events_of(api: Api, kind: str) -> list[dict[str, Any]]:
    h = api.headers(api.make_key(keys.EVENTS_READ, name=f"ev-{kind}"))
    answer = await api.client.get(f"/v3/events?kind={kind}", headers=h)
    assert answer.status_code == 200, answer.text
    found: list[dict[str, Any]] = answer.json()["events"]
    return found


async def test_suppressed_recipients_are_dropped_at_send(api: Api) -> None:
    with api.engine.begin() as conn:
        suppressions.add(conn, suppressions.BOUNCE, ["gone@example.net"])
    key = api.make_key()
    sent = await api.client.post(
        "/v3/mail/send", headers=api.headers(key),
        json=body_to("Gone@example.net", "ann@example.net",
                     categories=["invite"], custom_args={"order": "7"}))
    assert sent.status_code == 202, sent.text
    request_id = sent.headers["X-Message-Id"]

    [info] = api.queue.list_messages()
    envelope, _ = api.queue.get(info.queue_id)
    assert [r.address for r in envelope.recipients] == ["ann@example.net"]

    [dropped] = await events_of(api, "dropped")
    assert dropped["email"] == "gone@example.net"
    assert dropped["reason"] == "Bounced Address"
    assert dropped["sg_message_id"].startswith(f"{request_id}.")
    assert dropped["category"] == ["invite"] and dropped["order"] == "7"

    [processed] = await events_of(api, "processed")
    assert processed["email"] == "ann@example.net"
    assert processed["sg_message_id"] == f"{request_id}.{info.queue_id}.0"
    assert processed["order"] == "7"


async def test_a_request_with_every_recipient_dropped_queues_nothing(
    api: Api,
) -> None:
    with api.engine.begin() as conn:
        suppressions.add(conn, suppressions.UNSUBSCRIBE, ["ann@example.net"])
    sent = await api.client.post(
        "/v3/mail/send", headers=api.headers(api.make_key()),
        json=body_to("ann@example.net"))
    assert sent.status_code == 202
    assert api.queue.list_messages() == []
    [dropped] = await events_of(api, "dropped")
    assert dropped["reason"] == "Unsubscribed Address"


async def test_group_unsubscribes_apply_only_to_mail_of_that_group(api: Api) -> None:
    with api.engine.begin() as conn:
        group = suppressions.create_group(conn, "offers")
        suppressions.add(
            conn, suppressions.GROUP_UNSUBSCRIBE, ["ann@example.net"], group_id=group.id
        )
    h = api.headers(api.make_key())
    plain = await api.client.post(
        "/v3/mail/send", headers=h, json=body_to("ann@example.net"))
    in_group = await api.client.post(
        "/v3/mail/send", headers=h,
        json=body_to("ann@example.net", asm={"group_id": group.id}))
    assert plain.status_code == in_group.status_code == 202
    assert len(api.queue.list_messages()) == 1
    assert [e["email"] for e in await events_of(api, "dropped")] == ["ann@example.net"]


async def test_events_query_filters_and_pages(api: Api) -> None:
    h = api.headers(api.make_key())
    for rcpt in ("a@example.net", "b@example.net", "c@example.net"):
        assert (await api.client.post(
            "/v3/mail/send", headers=h, json=body_to(rcpt))).status_code == 202
    r = api.headers(api.make_key(keys.EVENTS_READ, name="reader"))
    page = (await api.client.get("/v3/events?limit=2", headers=r)).json()
    assert [e["email"] for e in page["events"]] == ["a@example.net", "b@example.net"]
    rest = (await api.client.get(f"/v3/events?after={page['next']}", headers=r)).json()
    assert [e["email"] for e in rest["events"]] == ["c@example.net"]
    assert rest["next"] is None
    one = (await api.client.get("/v3/events?email=B@example.net", headers=r)).json()
    assert [e["event"] for e in one["events"]] == ["processed"]
    later = await api.client.get("/v3/events?from=9999999999", headers=r)
    assert later.json()["events"] == []
    bad = await api.client.get("/v3/events?kind=opened", headers=r)
    assert bad.status_code == 400
    denied = await api.client.get("/v3/events", headers=h)
    assert denied.status_code == 403


async def test_webhook_settings_crud_and_replay(api: Api) -> None:
    h = api.headers(api.make_key(keys.WEBHOOKS))
    made = await api.client.post(
        "/v3/user/webhooks/event/settings", headers=h,
        json={"url": "http://127.0.0.1:9/hook", "bounce": True, "dropped": True})
    assert made.status_code == 201, made.text
    hook = made.json()
    assert hook["bounce"] is True and hook["delivered"] is False
    assert len(hook["signing_secret"]) == 64
    base = f"/v3/user/webhooks/event/settings/{hook['id']}"

    listed = await api.client.get("/v3/user/webhooks/event/settings/all", headers=h)
    assert [w["id"] for w in listed.json()["webhooks"]] == [hook["id"]]
    changed = await api.client.patch(base, headers=h, json={"enabled": False})
    assert changed.json()["enabled"] is False
    bad = await api.client.patch(base, headers=h, json={"url": "ftp://x/"})
    assert bad.status_code == 400

    replay = await api.client.post(
        f"{base}/replay", headers=h, json={"from": 1000, "to": 2000})
    assert replay.status_code == 202
    backwards = await api.client.post(
        f"{base}/replay", headers=h, json={"from": 2000, "to": 1000})
    assert backwards.status_code == 400

    assert (await api.client.delete(base, headers=h)).status_code == 204
    assert (await api.client.get(base, headers=h)).status_code == 404
    with api.engine.connect() as conn:
        from postroom.store.webhooks import webhook_replays
        assert conn.execute(sa.select(webhook_replays)).all() == []
