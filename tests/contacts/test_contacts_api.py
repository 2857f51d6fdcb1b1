"""``/v3/marketing/...`` in-process: keys and scopes, SendGrid's error
body with field paths, contacts, lists, fields, segments, and the
confirmation flow through the API's spool and the ``/confirm`` page."""

from __future__ import annotations

import email
import email.policy
import re
from typing import Any

import httpx
import pytest

from postroom.api import keys
from postroom.campaigns import contacts
from postroom.testing.api import NOW, Api

BASE = "/v3/marketing"


async def call(
    api: Api, method: str, path: str, key: str, body: Any = None,
    **params: str,
) -> httpx.Response:
    return await api.client.request(
        method, BASE + path, headers=api.headers(key), json=body,
        params=params or None)


def fields_of(response: httpx.Response) -> list[str | None]:
    return [e["field"] for e in response.json()["errors"]]


async def test_keys_need_the_marketing_scope(api: Api) -> None:
    mail_only = api.make_key(keys.MAIL_SEND)
    answer = await api.client.get(f"{BASE}/lists")
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    answer = await call(api, "GET", "/lists", "SG.nobody.nothing")
    assert answer.status_code == 401
    answer = await call(api, "PUT", "/contacts", mail_only,
                        {"contacts": [{"email": "a@example.net"}]})
    assert answer.status_code == 403
    assert answer.json()["errors"][0]["message"] == "access forbidden"
    for scopes in ((keys.MARKETING,), (keys.FULL,)):
        answer = await call(api, "GET", "/lists", api.make_key(*scopes))
        assert answer.status_code == 200


async def test_upsert_refuses_the_batch_naming_each_bad_field(api: Api) -> None:
    key = api.make_key()
    await call(api, "POST", "/field_definitions", key,
               {"name": "age", "field_type": "Number"})
    answer = await call(api, "PUT", "/contacts", key, {"contacts": [
        {"email": "ok@example.net"},
        {"email": "broken"},
        {"email": "c@example.net", "custom_fields": {"age": "old"}},
        {"email": "d@example.net", "custom_fields": {"shoe": 1}},
    ]})
    assert answer.status_code == 400
    assert fields_of(answer) == [
        "contacts.1.email", "contacts.2.custom_fields.age",
        "contacts.3.custom_fields.shoe"]
    assert answer.json()["errors"][0]["help"] is None
    with api.engine.connect() as conn:
        assert contacts.count(conn) == 0  # all or nothing

    shape = await call(api, "PUT", "/contacts", key,
                       {"contacts": [{"email": "a@example.net", "nick": "x"}]})
    assert shape.status_code == 400
    assert fields_of(shape) == ["contacts.0.nick"]
    empty = await call(api, "PUT", "/contacts", key, {"contacts": []})
    assert fields_of(empty) == ["contacts"]
    nolist = await call(api, "PUT", "/contacts", key, {
        "list_ids": ["nope"], "contacts": [{"email": "a@example.net"}]})
    assert nolist.status_code == 404 and fields_of(nolist) == ["list_ids.0"]


async def test_contacts_lists_and_membership(api: Api) -> None:
    key = api.make_key()
    made = await call(api, "POST", "/lists", key, {"name": "Friends"})
    assert made.status_code == 201
    list_id = made.json()["id"]
    assert (await call(api, "POST", "/lists", key, {"name": "Friends"})
            ).status_code == 400

    put = await call(api, "PUT", "/contacts", key, {
        "list_ids": [list_id],
        "contacts": [{"email": "Ann@Example.net", "first_name": "Ann"},
                     {"email": "bob@example.net"}]})
    assert put.status_code == 202
    assert (put.json()["created_count"], put.json()["updated_count"]) == (2, 0)
    ann_id = put.json()["contact_ids"][0]

    ann = (await call(api, "GET", f"/contacts/{ann_id}", key)).json()
    assert (ann["email"], ann["status"]) == ("ann@example.net", "unverified")
    assert (await call(api, "GET", "/contacts/nope", key)).status_code == 404
    listed = (await call(api, "GET", "/lists", key)).json()["result"]
    assert [(x["name"], x["contact_count"]) for x in listed] == [("Friends", 2)]
    count = (await call(api, "GET", "/contacts/count", key)).json()
    assert count == {"contact_count": 2}

    renamed = await call(api, "PATCH", f"/lists/{list_id}", key, {"name": "Pals"})
    assert renamed.json()["name"] == "Pals"
    removed = await call(api, "DELETE", f"/lists/{list_id}/contacts", key,
                         contact_ids=ann_id)
    assert removed.json() == {"removed_count": 1}
    added = await call(api, "POST", f"/lists/{list_id}/contacts", key,
                       {"contact_ids": [ann_id]})
    assert added.json() == {"added_count": 1}
    bad = await call(api, "POST", f"/lists/{list_id}/contacts", key,
                      {"contact_ids": [ann_id, "nope"]})
    assert bad.status_code == 404 and fields_of(bad) == ["contact_ids.1"]

    assert (await call(api, "DELETE", f"/lists/{list_id}", key)
            ).status_code == 204
    assert (await call(api, "GET", f"/lists/{list_id}", key)).status_code == 404
    gone = await call(api, "DELETE", "/contacts", key, ids=ann_id)
    assert gone.json()["deleted_count"] == 1
    missing = await call(api, "DELETE", "/contacts", key)
    assert missing.status_code == 400 and fields_of(missing) == ["ids"]


async def test_fields_segments_and_search(api: Api) -> None:
    key = api.make_key()
    assert (await call(api, "POST", "/field_definitions", key,
                       {"name": "city", "field_type": "Text"})).status_code == 201
    bad = await call(api, "POST", "/field_definitions", key,
                     {"name": "c", "field_type": "Blob"})
    assert bad.status_code == 400 and fields_of(bad) == ["field_type"]
    defined = (await call(api, "GET", "/field_definitions", key)).json()
    assert defined["custom_fields"] == [
        {"id": "city", "name": "city", "field_type": "Text"}]

    await call(api, "PUT", "/contacts", key, {"contacts": [
        {"email": "a@example.net", "custom_fields": {"city": "Basel"}},
        {"email": "b@example.net", "custom_fields": {"city": "Bern"}}]})
    tree = {"field": "custom.city", "op": "starts_with", "value": "Bas"}
    found = (await call(api, "POST", "/contacts/search", key,
                        {"conditions": tree})).json()
    assert found["contact_count"] == 1
    assert found["result"][0]["email"] == "a@example.net"

    made = await call(api, "POST", "/segments", key,
                      {"name": "baslers", "conditions": tree})
    assert made.status_code == 201
    shown = (await call(api, "GET", f"/segments/{made.json()['id']}", key)).json()
    assert shown["contacts_count"] == 1
    assert [c["email"] for c in shown["contacts_sample"]] == ["a@example.net"]
    refused = await call(api, "POST", "/segments", key, {
        "name": "bad", "conditions": {"and": [tree, {"field": "city",
                                                     "op": "eq", "value": 1}]}})
    assert refused.status_code == 400
    assert fields_of(refused) == ["conditions.and.1.field"]
    assert (await call(api, "DELETE", f"/segments/{made.json()['id']}", key)
            ).status_code == 204
    assert (await call(api, "DELETE", "/field_definitions/city", key)
            ).status_code == 204


def confirmation_link(api: Api) -> str:
    [info] = api.queue.list_messages()
    message = email.message_from_bytes(
        api.queue.read_content(info.queue_id), policy=email.policy.default)
    assert message["From"] == "news@sender.test"
    assert message["Subject"] == "Please confirm your subscription"
    text = message.get_body(("plain",))
    assert text is not None
    match = re.search(r"https://lists\.sender\.test/confirm/(\S+)",
                      text.get_content())
    assert match, text.get_content()
    return "/confirm/" + match.group(1)


async def test_confirmation_through_the_api_and_the_page(api: Api) -> None:
    key = api.make_key()
    put = await call(api, "PUT", "/contacts", key, {"contacts": [
        {"email": "ann@example.net", "first_name": "Ann"}]})
    ann_id = put.json()["contact_ids"][0]
    asked = await call(api, "POST", "/contacts/confirm", key, {"ids": [ann_id]})
    assert asked.status_code == 202 and asked.json() == {"queued_count": 1}
    with api.engine.connect() as conn:
        assert contacts.get(conn, ann_id).status == "pending"
    [info] = api.queue.list_messages()
    envelope, _ = api.queue.get(info.queue_id)
    assert [r.address for r in envelope.recipients] == ["ann@example.net"]
    assert envelope.auth_user.startswith("apikey:")
    path = confirmation_link(api)

    # Tampered: 404, and nothing changes.
    wrong = path[:-2] + ("AA" if not path.endswith("AA") else "BB")
    page = await api.client.get(wrong)
    assert page.status_code == 404 and "not valid" in page.text
    page = await api.client.get("/confirm/nonsense")
    assert page.status_code == 404

    page = await api.client.get(path)
    assert page.status_code == 200
    assert "ann@example.net is confirmed" in page.text
    assert page.headers["content-type"].startswith("text/html")
    with api.engine.connect() as conn:
        ann = contacts.get(conn, ann_id)
    assert ann.status == "verified" and ann.verified_at is not None
    # A second click is still a success; verified contacts get no mail.
    assert (await api.client.get(path)).status_code == 200
    again = await call(api, "POST", "/contacts/confirm", key, {"ids": [ann_id]})
    assert again.json() == {"queued_count": 0}

    # Expired: 400 with an explanation.
    ttl = api.context.config.campaigns.confirm_ttl
    api.context.clock = lambda: NOW + ttl + 1
    page = await api.client.get(path)
    assert page.status_code == 400 and "expired" in page.text


async def test_unsubscribed_contacts_are_not_brought_back(api: Api) -> None:
    key = api.make_key()
    put = await call(api, "PUT", "/contacts", key,
                     {"contacts": [{"email": "bob@example.net"}]})
    bob = put.json()["contact_ids"][0]
    await call(api, "POST", "/contacts/confirm", key, {"ids": [bob]})
    path = confirmation_link(api)
    with api.engine.begin() as conn:
        contacts.set_status(conn, bob, "unsubscribed")
    page = await api.client.get(path)
    assert page.status_code == 200 and "unsubscribed" in page.text
    with api.engine.connect() as conn:
        assert contacts.get(conn, bob).status == "unsubscribed"
    unknown = await call(api, "POST", "/contacts/confirm", key, {"ids": ["x"]})
    assert unknown.status_code == 404 and fields_of(unknown) == ["ids.0"]


@pytest.mark.parametrize("path", ["/contacts", "/lists", "/segments",
                                  "/field_definitions", "/contacts/confirm"])
async def test_every_marketing_path_is_in_the_openapi_document(
    api: Api, path: str
) -> None:
    document = (await api.client.get("/openapi.json")).json()
    assert BASE + path in document["paths"]
    post = document["paths"][BASE + path].get("post") or document["paths"][
        BASE + path]["put"]
    ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    model = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert model["type"] == "object"
