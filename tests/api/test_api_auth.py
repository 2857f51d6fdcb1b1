"""Bearer keys, scopes and the error shape of refusals."""

from __future__ import annotations

import pytest

from postroom.api import keys
from postroom.store import api_keys as table
from postroom.testing.api import Api, minimal

SEND = "/v3/mail/send"


def only_error(response_json: dict[str, object]) -> dict[str, object]:
    errors = response_json["errors"]
    assert isinstance(errors, list) and len(errors) == 1
    error = errors[0]
    assert set(error) == {"message", "field", "help"}
    return error


async def test_no_header_is_401_in_sendgrids_shape(api: Api) -> None:
    response = await api.client.post(SEND, json=minimal())
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert only_error(response.json()) == {
        "message": "authorization required", "field": None, "help": None}


@pytest.mark.parametrize(
    "header",
    [
        "Basic dXNlcjpwdw==",
        "Bearer",
        "Bearer SG.nope",
        "Bearer SG.unknownid.secret",
        "Bearer not-a-sendgrid-key",
    ],
)
async def test_bad_credentials_are_401(api: Api, header: str) -> None:
    response = await api.client.post(
        SEND, json=minimal(), headers={"Authorization": header})
    assert response.status_code == 401
    assert only_error(response.json())["field"] is None


async def test_wrong_secret_is_401(api: Api) -> None:
    key = api.make_key()
    wrong = key[:-3] + ("AAA" if not key.endswith("AAA") else "BBB")
    response = await api.client.post(SEND, json=minimal(), headers=api.headers(wrong))
    assert response.status_code == 401


async def test_revoked_key_is_401(api: Api) -> None:
    key = api.make_key()
    key_id, _ = keys.split(key) or ("", "")
    with api.engine.begin() as conn:
        assert table.revoke(conn, key_id)
    response = await api.client.post(SEND, json=minimal(), headers=api.headers(key))
    assert response.status_code == 401


async def test_key_without_the_scope_is_403(api: Api) -> None:
    key = api.make_key(keys.API_KEYS)
    response = await api.client.post(SEND, json=minimal(), headers=api.headers(key))
    assert response.status_code == 403
    assert only_error(response.json())["message"] == "access forbidden"


async def test_auth_comes_before_the_body(api: Api) -> None:
    # A stranger learns nothing about the request format.
    response = await api.client.post(SEND, content=b"{not json")
    assert response.status_code == 401


@pytest.mark.parametrize("scope", [keys.MAIL_SEND, keys.FULL])
async def test_mail_send_and_full_keys_may_send(api: Api, scope: str) -> None:
    key = api.make_key(scope)
    response = await api.client.post(SEND, json=minimal(), headers=api.headers(key))
    assert response.status_code == 202, response.text


async def test_use_is_recorded(api: Api) -> None:
    key = api.make_key()
    key_id, _ = keys.split(key) or ("", "")
    await api.client.post(SEND, json=minimal(), headers=api.headers(key))
    with api.engine.connect() as conn:
        stored = table.get(conn, key_id)
    assert stored is not None and stored.last_used_at is not None
    # Only a hash of the secret is stored.
    assert key.rsplit(".", 1)[1] not in repr(stored)


async def test_unknown_path_answers_in_sendgrids_shape(api: Api) -> None:
    response = await api.client.get("/v3/nothing-here")
    assert response.status_code == 404
    assert only_error(response.json())["field"] is None


async def test_openapi_document_describes_mail_send(api: Api) -> None:
    response = await api.client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert "/v3/mail/send" in document["paths"]
    schemas = document["components"]["schemas"]
    assert "personalizations" in schemas["MailSend"]["properties"]
    assert "Personalization" in schemas
