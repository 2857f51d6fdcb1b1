"""``/v3/user/webhooks/event/settings``: Event Webhook endpoints, in the
shape of SendGrid's multiple-webhooks API. Needs ``webhooks``.

    POST   .../settings             {"url", "enabled"?, <kind>: bool ...}
    GET    .../settings/all         {"webhooks": [...]}
    GET    .../settings/{id}
    PATCH  .../settings/{id}        any of the POST fields
    DELETE .../settings/{id}
    POST   .../settings/{id}/replay {"from": epoch, "to": epoch}  (ours)

An endpoint object has ``id``, ``url``, ``enabled``, one boolean per
event kind (SendGrid's names: ``spam_report`` for ``spamreport``;
none given at creation means all), ``signing_secret`` (the HMAC key,
see ``webhooks/signing.py``), and what the sender knows of it
(``failures``, ``last_error``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from postroom import events
from postroom.api.auth import WebhooksKey
from postroom.api.errors import ApiError, problems_of
from postroom.webhooks import endpoints
from postroom.webhooks.endpoints import Endpoint

router = APIRouter()
BASE = "/v3/user/webhooks/event/settings"

# SendGrid's field name for each kind.
_FIELDS = {k: ("spam_report" if k == "spamreport" else k) for k in events.KINDS}


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str | None = None
    enabled: bool | None = None
    processed: bool | None = None
    dropped: bool | None = None
    deferred: bool | None = None
    delivered: bool | None = None
    bounce: bool | None = None
    open: bool | None = None
    click: bool | None = None
    unsubscribe: bool | None = None
    spam_report: bool | None = None
    rsvp: bool | None = None

    def kinds(self) -> list[str] | None:
        chosen = {k: getattr(self, f) for k, f in _FIELDS.items()}
        if all(v is None for v in chosen.values()):
            return None
        return [k for k, v in chosen.items() if v]


class Replay(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    start: float = Field(alias="from")
    end: float = Field(alias="to")


def _shape(e: Endpoint) -> dict[str, Any]:
    return {
        "id": str(e.id),
        "url": e.url,
        "enabled": e.enabled,
        **{f: e.wants(k) for k, f in _FIELDS.items()},
        "signing_secret": e.secret,
        "failures": e.failures,
        "last_error": e.last_error,
        "created_date": int(e.created),
    }


def _engine(request: Request) -> sa.Engine:
    engine: sa.Engine = request.app.state.api.engine
    return engine


def _id(webhook_id: str) -> int:
    if not (webhook_id.isascii() and webhook_id.isdigit()):
        raise ApiError(404, [("no such webhook", "id")])
    return int(webhook_id)


async def _body(request: Request, model: type[Any]) -> Any:
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as e:
        raise ApiError(400, problems_of(e)) from None


@router.post(BASE, status_code=201, summary="Add an Event Webhook endpoint")
async def create(request: Request, _key: WebhooksKey) -> dict[str, Any]:
    body: Settings = await _body(request, Settings)
    if not body.url:
        raise ApiError(400, [("a url is required", "url")])
    url = body.url

    def store() -> Endpoint:
        with _engine(request).begin() as conn:
            return endpoints.create(
                conn, url, kinds=body.kinds(),
                enabled=body.enabled if body.enabled is not None else True,
            )

    try:
        made = await asyncio.to_thread(store)
    except ValueError as e:
        raise ApiError(400, [(str(e), "url")]) from None
    return _shape(made)


@router.get(BASE + "/all", summary="List Event Webhook endpoints")
async def list_all(request: Request, _key: WebhooksKey) -> dict[str, Any]:
    def read() -> list[Endpoint]:
        with _engine(request).connect() as conn:
            return endpoints.list_all(conn)

    return {"webhooks": [_shape(e) for e in await asyncio.to_thread(read)]}


@router.get(BASE + "/{webhook_id}", summary="Show an Event Webhook endpoint")
async def show(webhook_id: str, request: Request, _key: WebhooksKey) -> dict[str, Any]:
    wanted = _id(webhook_id)

    def read() -> Endpoint | None:
        with _engine(request).connect() as conn:
            return endpoints.get(conn, wanted)

    found = await asyncio.to_thread(read)
    if found is None:
        raise ApiError(404, [("no such webhook", "id")])
    return _shape(found)


@router.patch(BASE + "/{webhook_id}", summary="Change an Event Webhook endpoint")
async def change(
    webhook_id: str, request: Request, _key: WebhooksKey
) -> dict[str, Any]:
    wanted = _id(webhook_id)
    body: Settings = await _body(request, Settings)

    def store() -> Endpoint | None:
        with _engine(request).begin() as conn:
            return endpoints.update(
                conn, wanted, url=body.url, enabled=body.enabled, kinds=body.kinds()
            )

    try:
        found = await asyncio.to_thread(store)
    except ValueError as e:
        raise ApiError(400, [(str(e), "url")]) from None
    if found is None:
        raise ApiError(404, [("no such webhook", "id")])
    return _shape(found)


@router.delete(
    BASE + "/{webhook_id}", status_code=204, summary="Delete an Event Webhook"
)
async def delete(webhook_id: str, request: Request, _key: WebhooksKey) -> Response:
    wanted = _id(webhook_id)

    def remove() -> bool:
        with _engine(request).begin() as conn:
            return endpoints.delete(conn, wanted)

    if not await asyncio.to_thread(remove):
        raise ApiError(404, [("no such webhook", "id")])
    return Response(status_code=204)


@router.post(
    BASE + "/{webhook_id}/replay",
    status_code=202,
    summary="Post the events of a time range again",
)
async def replay(
    webhook_id: str, request: Request, _key: WebhooksKey
) -> dict[str, Any]:
    wanted = _id(webhook_id)
    body: Replay = await _body(request, Replay)

    def store() -> list[int]:
        with _engine(request).begin() as conn:
            return endpoints.replay(conn, body.start, body.end, webhook_id=wanted)

    try:
        made = await asyncio.to_thread(store)
    except ValueError as e:
        raise ApiError(400, [(str(e), "to")]) from None
    if not made:
        raise ApiError(404, [("no such webhook", "id")])
    return {"replay_id": str(made[0])}
