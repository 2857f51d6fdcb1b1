"""``/v3/api_keys``: list, create and revoke API keys over the API, in
SendGrid's shapes. Needs the ``api_keys`` scope.

A key may not make a key with scopes it does not have itself (SendGrid
refuses the same), so an ``api_keys`` key cannot mint a full-access
one. The new key's plaintext is in the 201 answer and nowhere else.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import sqlalchemy as sa
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from postroom.api import keys
from postroom.api.auth import ApiKeysKey
from postroom.api.errors import ApiError, problems_of
from postroom.store import api_keys as table
from postroom.store.api_keys import ApiKey

router = APIRouter()


class NewKeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=100)]
    # SendGrid makes a full-access key when no scopes are given.
    scopes: list[str] | None = None


def _engine(request: Request) -> sa.Engine:
    engine: sa.Engine = request.app.state.api.engine
    return engine


@router.get("/v3/api_keys", summary="List API keys")
async def list_keys(
    request: Request, _key: ApiKeysKey
) -> dict[str, list[dict[str, object]]]:
    def read() -> list[ApiKey]:
        with _engine(request).connect() as conn:
            return table.list_all(conn)

    found = await asyncio.to_thread(read)
    return {
        "result": [
            {"api_key_id": k.id, "name": k.name, "scopes": list(k.scopes)}
            for k in found
            if not k.revoked
        ]
    }


@router.post("/v3/api_keys", status_code=201, summary="Create an API key")
async def create_key(
    request: Request, caller: ApiKeysKey
) -> dict[str, object]:
    try:
        body = NewKeyRequest.model_validate_json(await request.body())
    except ValidationError as e:
        raise ApiError(400, problems_of(e)) from None
    wanted = body.scopes if body.scopes is not None else [keys.FULL]
    try:
        scopes = keys.check_scopes(wanted)
    except ValueError as e:
        raise ApiError(400, [(str(e), "scopes")]) from None
    if not all(keys.allows(caller, s) for s in scopes):
        raise ApiError(
            403, [("a key cannot grant scopes it does not have", "scopes")]
        )

    def store() -> keys.NewKey:
        with _engine(request).begin() as conn:
            return keys.create(conn, body.name, scopes)

    made = await asyncio.to_thread(store)
    return {
        "api_key": made.plaintext,
        "api_key_id": made.key.id,
        "name": made.key.name,
        "scopes": list(made.key.scopes),
    }


@router.delete(
    "/v3/api_keys/{api_key_id}", status_code=204, summary="Revoke an API key"
)
async def revoke_key(
    api_key_id: str,
    request: Request,
    _key: ApiKeysKey,
) -> Response:
    def revoke() -> bool:
        with _engine(request).begin() as conn:
            return table.revoke(conn, api_key_id)

    if not await asyncio.to_thread(revoke):
        raise ApiError(404, [("no such API key", "api_key_id")])
    return Response(status_code=204)
