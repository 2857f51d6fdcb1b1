"""Mail Send with a stored template (``template_id``)."""

from __future__ import annotations

import email
import email.policy

from postroom.campaigns import templates
from postroom.testing.api import Api, minimal

SEND = "/v3/mail/send"
HTML = (
    "<style>p { color: #333 }</style>"
    "<p>Dear {{ first_name }}, see you on {{ day }}.</p>"
)


def stored_template(api: Api, subject: str = "Invitation for {{ first_name }}") -> str:
    with api.engine.begin() as conn:
        template = templates.create_template(conn, "Invitation")
        templates.add_version(conn, template.id, subject=subject, html=HTML,
                              activate=True)
    return template.id


def body_with(template_id: str, **changes: object) -> dict[str, object]:
    body = minimal(
        template_id=template_id,
        personalizations=[
            {"to": [{"email": "ann@example.net"}],
             "dynamic_template_data": {"first_name": "Ann", "day": "Friday"}},
            {"to": [{"email": "bob@example.net"}],
             "dynamic_template_data": {"first_name": "Bob", "day": "Monday"}},
        ],
        **changes,
    )
    del body["content"]
    if "subject" not in changes:
        del body["subject"]
    return body


async def test_each_personalization_renders_the_template(api: Api) -> None:
    template_id = stored_template(api)
    key = api.make_key()
    response = await api.client.post(
        SEND, json=body_with(template_id), headers=api.headers(key))
    assert response.status_code == 202, response.text
    ann, bob = api.queue.list_messages()
    for info, name, day in ((ann, "Ann", "Friday"), (bob, "Bob", "Monday")):
        message = email.message_from_bytes(
            api.queue.read_content(info.queue_id), policy=email.policy.default)
        assert message["Subject"] == f"Invitation for {name}"
        assert message.get_content_type() == "multipart/alternative"
        plain = message.get_body(("plain",))
        html = message.get_body(("html",))
        assert plain is not None and html is not None
        assert f"Dear {name}, see you on {day}." in plain.get_content()
        assert f"Dear {name}" in html.get_content()
        assert "color" in html.get_content()  # CSS inlined by the template


async def test_template_whose_subject_renders_empty_needs_one(api: Api) -> None:
    # Undefined data renders blank: no subject from the template here.
    template_id = stored_template(api, subject="{{ subject }}")
    key = api.make_key()
    response = await api.client.post(
        SEND, json=body_with(template_id), headers=api.headers(key))
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "subject"
    response = await api.client.post(
        SEND, json=body_with(template_id, subject="Given"), headers=api.headers(key))
    assert response.status_code == 202, response.text
