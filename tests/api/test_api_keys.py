"""Keys over the API (/v3/api_keys) and the command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from postroom.api import keys
from postroom.cli import main as cli_main
from postroom.store import api_keys as table
from postroom.store import db
from postroom.testing.api import Api, minimal


async def test_create_list_revoke_over_the_api(api: Api) -> None:
    admin = api.make_key(keys.API_KEYS, keys.MAIL_SEND)
    made = await api.client.post(
        "/v3/api_keys", headers=api.headers(admin),
        json={"name": "shop", "scopes": ["mail.send"]})
    assert made.status_code == 201, made.text
    created = made.json()
    assert created["api_key"].startswith("SG.")
    assert created["scopes"] == ["mail.send"]

    listed = await api.client.get("/v3/api_keys", headers=api.headers(admin))
    assert {k["name"] for k in listed.json()["result"]} == {"test", "shop"}
    assert all("api_key" not in k for k in listed.json()["result"])
    assert created["api_key"].rsplit(".", 1)[1] not in listed.text

    new_key = created["api_key"]
    sent = await api.client.post(
        "/v3/mail/send", json=minimal(), headers=api.headers(new_key))
    assert sent.status_code == 202

    gone = await api.client.delete(
        f"/v3/api_keys/{created['api_key_id']}", headers=api.headers(admin))
    assert gone.status_code == 204
    again = await api.client.delete(
        f"/v3/api_keys/{created['api_key_id']}", headers=api.headers(admin))
    assert again.status_code == 404
    refused = await api.client.post(
        "/v3/mail/send", json=minimal(), headers=api.headers(new_key))
    assert refused.status_code == 401


async def test_a_key_cannot_grant_more_than_it_has(api: Api) -> None:
    admin = api.make_key(keys.API_KEYS)
    response = await api.client.post(
        "/v3/api_keys", headers=api.headers(admin), json={"name": "x"})
    assert response.status_code == 403  # no scopes given means full access
    assert response.json()["errors"][0]["field"] == "scopes"
    unknown = await api.client.post(
        "/v3/api_keys", headers=api.headers(admin),
        json={"name": "x", "scopes": ["everything"]})
    assert unknown.status_code == 400


async def test_mail_send_key_cannot_manage_keys(api: Api) -> None:
    sender = api.make_key(keys.MAIL_SEND)
    response = await api.client.get("/v3/api_keys", headers=api.headers(sender))
    assert response.status_code == 403


def test_cli_create_list_revoke(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "postroom.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n')
    base = ["-c", str(config), "apikey"]

    assert cli_main.main([*base, "create", "billing", "--scope", "mail.send",
                          "--scope", "api_keys"]) == 0
    out, err = capsys.readouterr()
    plaintext = out.strip()
    key_id, _secret = keys.split(plaintext) or ("", "")
    assert key_id and "will not be shown again" in err

    assert cli_main.main([*base, "list"]) == 0
    out, _ = capsys.readouterr()
    assert key_id in out and "active" in out and "mail.send,api_keys" in out
    assert plaintext not in out

    assert cli_main.main([*base, "revoke", key_id]) == 0
    assert cli_main.main([*base, "revoke", key_id]) == 1
    assert cli_main.main([*base, "list"]) == 0
    out, _ = capsys.readouterr()
    assert "revoked" in out

    engine = db.create_engine(f"sqlite:///{tmp_path / 'data' / 'postroom.db'}")
    with engine.connect() as conn:
        assert keys.verify(conn, plaintext) is None
        stored = table.get(conn, key_id)
    engine.dispose()
    assert stored is not None and stored.revoked


def test_cli_default_scope_is_mail_send(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "postroom.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n')
    assert cli_main.main(["-c", str(config), "apikey", "create", "app"]) == 0
    assert cli_main.main(["-c", str(config), "apikey", "list"]) == 0
    out, _ = capsys.readouterr()
    assert "  mail.send  app" in out
