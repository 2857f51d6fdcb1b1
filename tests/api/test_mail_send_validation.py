"""400s name the field, as SendGrid's do; limits are configurable."""

from __future__ import annotations

from typing import Any

import pytest

from postroom.testing.api import Api, b64, minimal

SEND = "/v3/mail/send"


async def errors_of(api: Api, body: Any, status: int = 400) -> list[tuple[str, str]]:
    key = api.make_key()
    response = await api.client.post(SEND, json=body, headers=api.headers(key))
    assert response.status_code == status, response.text
    assert api.queue.list_messages() == []
    return [(e["field"], e["message"]) for e in response.json()["errors"]]


def fields(found: list[tuple[str, str]]) -> list[str]:
    return [f for f, _ in found]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"personalizations": [{"to": [{"email": "not-an-address"}]}]},
         "personalizations.0.to.0.email"),
        ({"personalizations": [{"to": [{"email": "a@example.net"},
                                       {"email": "b@@example.net"}]}]},
         "personalizations.0.to.1.email"),
        ({"personalizations": [{"to": [{"email": "a@example.net"}],
                                "cc": [{"email": "x"}]}]},
         "personalizations.0.cc.0.email"),
        ({"personalizations": [{"to": []}]}, "personalizations.0.to"),
        ({"personalizations": []}, "personalizations"),
        ({"from": {"email": "nobody"}}, "from.email"),
        ({"from": {"email": "a@example.net", "name": "Evil\r\nBcc: x@y"}},
         "from.name"),
        ({"subject": "Two\r\nlines"}, "subject"),
        ({"content": [{"type": "text/plain", "value": ""}]}, "content.0.value"),
        ({"content": [{"type": "image/png", "value": "x"}]}, "content.0.type"),
        ({"headers": {"Bad Name": "x"}}, "headers"),
        ({"headers": {"X-Ok": "a\nb"}}, "headers"),
        ({"headers": {"From": "x@y.test"}}, "headers"),
        ({"attachments": [{"content": "***", "filename": "a.bin"}]},
         "attachments.0.content"),
        ({"attachments": [{"content": b64(b"x"), "filename": "a.bin",
                           "disposition": "sideways"}]},
         "attachments.0.disposition"),
        ({"send_at": -1}, "send_at"),
        ({"categories": ["a"] * 11}, "categories"),
        ({"persnalizations": []}, "persnalizations"),
        ({"personalizations": [{"to": [{"email": "a@example.net"}],
                                "custom_args": {"n": 1}}]},
         "personalizations.0.custom_args.n"),
    ],
)
async def test_shape_errors_name_the_field(
    api: Api, change: dict[str, Any], field: str
) -> None:
    assert field in fields(await errors_of(api, minimal(**change)))


async def test_missing_from_is_named(api: Api) -> None:
    body = minimal()
    del body["from"]
    assert "from" in fields(await errors_of(api, body))


async def test_invalid_json_is_400(api: Api) -> None:
    key = api.make_key()
    response = await api.client.post(
        SEND, content=b"{\"personalizations\": [", headers=api.headers(key))
    assert response.status_code == 400
    assert response.json()["errors"]


async def test_every_problem_is_reported_at_once(api: Api) -> None:
    body = minimal(
        personalizations=[{"to": [{"email": "bad"}, {"email": "worse"}]}],
        **{"from": {"email": "nope"}},
    )
    assert set(fields(await errors_of(api, body))) >= {
        "personalizations.0.to.0.email", "personalizations.0.to.1.email",
        "from.email"}


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"subject": None}, "subject", "subject is required"),
        ({"content": None}, "content", "content parameter is required"),
        ({"content": [{"type": "text/html", "value": "<p>x</p>"},
                      {"type": "text/plain", "value": "x"}]},
         "content.1.type", "text/plain content type must be first"),
        ({"personalizations": [{"to": [{"email": "a@example.net"}],
                                "bcc": [{"email": "A@example.net"}]}]},
         "personalizations.0.bcc.0.email", "unique"),
        ({"attachments": [{"content": b64(b"x"), "filename": "a.png",
                           "disposition": "inline"}]},
         "attachments.0.content_id", "content_id is required"),
        ({"categories": ["a", "a"]}, "categories.1", "unique"),
        ({"reply_to": {"email": "r@example.net"},
          "reply_to_list": [{"email": "s@example.net"}]},
         "reply_to_list", "cannot both"),
        ({"template_id": "d-123", "content": None}, "template_id",
         "not a valid template ID"),
        ({"template_id": "d-123"}, "content", "cannot be combined"),
        ({"send_at": 10**12}, "send_at", "ten years"),
    ],
)
async def test_rules_across_fields(
    api: Api, change: dict[str, Any], field: str, words: str
) -> None:
    body = minimal(**change)
    body = {k: v for k, v in body.items() if v is not None}
    found = dict(await errors_of(api, body))
    assert field in found, found
    assert words in found[field]


async def test_subject_may_come_from_every_personalization(api: Api) -> None:
    body = minimal(personalizations=[
        {"to": [{"email": "a@example.net"}], "subject": "one"},
        {"to": [{"email": "b@example.net"}], "subject": "two"},
    ])
    del body["subject"]
    key = api.make_key()
    response = await api.client.post(SEND, json=body, headers=api.headers(key))
    assert response.status_code == 202, response.text


@pytest.mark.http(max_personalizations=2, max_recipients=3)
async def test_limits_are_configurable(api: Api) -> None:
    three = [{"to": [{"email": f"p{i}@example.net"}]} for i in range(3)]
    found = await errors_of(api, minimal(personalizations=three))
    assert [f for f, m in found if "at most 2 personalizations" in m] == [
        "personalizations"]
    crowded = [{"to": [{"email": f"r{i}@example.net"} for i in range(4)]}]
    found = await errors_of(api, minimal(personalizations=crowded))
    assert any("at most 3 recipients" in m for _, m in found)


@pytest.mark.http(max_request_size=2000)
async def test_request_body_limit_is_413(api: Api) -> None:
    body = minimal(content=[{"type": "text/plain", "value": "x" * 5000}])
    found = await errors_of(api, body, status=413)
    assert found[0][0] is None and "larger than 2000 bytes" in found[0][1]


async def test_default_limits_are_sendgrids(api: Api) -> None:
    limits = api.context.config.http
    assert (limits.max_personalizations, limits.max_recipients) == (1000, 1000)
    assert limits.max_request_size == 30 * 1024 * 1024
    crowded = [{"to": [{"email": f"r{i}@example.net"}]} for i in range(1001)]
    found = await errors_of(api, minimal(personalizations=crowded))
    assert "personalizations" in fields(found)
