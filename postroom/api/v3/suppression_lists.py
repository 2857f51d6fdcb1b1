"""``/v3/suppression/{list}``: the bounce, spam report, invalid email
and (global) unsubscribe lists, in SendGrid's shapes. Needs
``suppressions``.

    GET    /v3/suppression/bounces?start_time=&end_time=&limit=&offset=&email=
           -> [{"created", "email", "reason", "status"}]
    GET    /v3/suppression/bounces/{email}   -> the same, one entry or none
    POST   /v3/suppression/bounces {"emails": [...]} -> 201 (ours: SendGrid
           fills these lists only itself)
    DELETE /v3/suppression/bounces {"emails": [...]} or {"delete_all": true}
    DELETE /v3/suppression/bounces/{email}

and likewise ``spam_reports``, ``invalid_emails``, ``unsubscribes``.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, ValidationError

from postroom import suppressions
from postroom.api.auth import SuppressionsKey
from postroom.api.errors import SQL_INT_MAX, ApiError, problems_of

router = APIRouter()

# URL name -> list.
LISTS = {
    "bounces": suppressions.BOUNCE,
    "spam_reports": suppressions.SPAMREPORT,
    "invalid_emails": suppressions.INVALID,
    "unsubscribes": suppressions.UNSUBSCRIBE,
}


class Emails(BaseModel):
    model_config = ConfigDict(extra="forbid")
    emails: list[str] = []
    delete_all: bool = False


def _kind(name: str) -> str:
    kind = LISTS.get(name)
    if kind is None:
        raise ApiError(404, [(f"no suppression list {name!r}", None)])
    return kind


def _engine(request: Request) -> sa.Engine:
    engine: sa.Engine = request.app.state.api.engine
    return engine


def _shape(e: suppressions.Entry) -> dict[str, Any]:
    out: dict[str, Any] = {"created": int(e.created), "email": e.email}
    if e.kind != suppressions.UNSUBSCRIBE:
        out["reason"] = e.reason or ""
        out["status"] = e.status or ""
    return out


async def _emails(request: Request) -> Emails:
    try:
        return Emails.model_validate_json(await request.body() or b"{}")
    except ValidationError as e:
        raise ApiError(400, problems_of(e)) from None


@router.get("/v3/suppression/{name}", summary="List a suppression list")
async def list_entries(
    name: str,
    request: Request,
    _key: SuppressionsKey,
    start_time: float | None = None,
    end_time: float | None = None,
    email: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 500,
    offset: Annotated[int, Query(ge=0, le=SQL_INT_MAX)] = 0,
) -> list[dict[str, Any]]:
    kind = _kind(name)

    def read() -> list[suppressions.Entry]:
        with _engine(request).connect() as conn:
            return suppressions.entries(
                conn, kind, start=start_time, end=end_time, email=email,
                limit=limit, offset=offset,
            )

    return [_shape(e) for e in await asyncio.to_thread(read)]


@router.get("/v3/suppression/{name}/{email}", summary="Look up one address")
async def show(
    name: str, email: str, request: Request, _key: SuppressionsKey
) -> list[dict[str, Any]]:
    kind = _kind(name)

    def read() -> list[suppressions.Entry]:
        with _engine(request).connect() as conn:
            return suppressions.entries(conn, kind, email=email, limit=1)

    return [_shape(e) for e in await asyncio.to_thread(read)]


@router.post("/v3/suppression/{name}", status_code=201, summary="Add addresses")
async def add(name: str, request: Request, _key: SuppressionsKey) -> dict[str, Any]:
    kind = _kind(name)
    body = await _emails(request)
    if not body.emails:
        raise ApiError(400, [("give at least one address", "emails")])

    def store() -> list[str]:
        with _engine(request).begin() as conn:
            return suppressions.add(conn, kind, body.emails, reason="added by API")

    return {"emails": await asyncio.to_thread(store)}


@router.delete("/v3/suppression/{name}", status_code=204, summary="Remove addresses")
async def remove(name: str, request: Request, _key: SuppressionsKey) -> Response:
    kind = _kind(name)
    body = await _emails(request)
    if not body.emails and not body.delete_all:
        raise ApiError(400, [("give emails or delete_all", "emails")])

    def store() -> None:
        with _engine(request).begin() as conn:
            if body.delete_all:
                suppressions.clear(conn, kind)
            else:
                suppressions.remove(conn, kind, body.emails)

    await asyncio.to_thread(store)
    return Response(status_code=204)


@router.delete(
    "/v3/suppression/{name}/{email}", status_code=204, summary="Remove one address"
)
async def remove_one(
    name: str, email: str, request: Request, _key: SuppressionsKey
) -> Response:
    kind = _kind(name)

    def store() -> int:
        with _engine(request).begin() as conn:
            return suppressions.remove(conn, kind, [email])

    if not await asyncio.to_thread(store):
        raise ApiError(404, [("the address is not on the list", "email")])
    return Response(status_code=204)
