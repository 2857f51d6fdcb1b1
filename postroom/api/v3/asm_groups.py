"""``/v3/asm/...``: unsubscribe groups and their suppressions, and the
global unsubscribe list, in SendGrid's shapes. Needs ``suppressions``.

    POST   /v3/asm/groups {"name", "description"?, "is_default"?} -> 201
    GET    /v3/asm/groups                  -> [{"id", "name", ...}]
    GET    /v3/asm/groups/{id}
    PATCH  /v3/asm/groups/{id}
    DELETE /v3/asm/groups/{id}
    GET    /v3/asm/groups/{id}/suppressions         -> ["a@b", ...]
    POST   /v3/asm/groups/{id}/suppressions {"recipient_emails": [...]}
    DELETE /v3/asm/groups/{id}/suppressions/{email}
    POST   /v3/asm/suppressions/global {"recipient_emails": [...]}
    GET    /v3/asm/suppressions/global/{email} -> {"recipient_email"} or {}
    DELETE /v3/asm/suppressions/global/{email}

Mail sent with ``asm.group_id`` is dropped for the group's
unsubscribes as well as for every global list (``suppressions.py``).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from postroom import suppressions
from postroom.api.auth import SuppressionsKey
from postroom.api.errors import SQL_INT_MAX, ApiError, problems_of
from postroom.suppressions import Group

GroupId = Annotated[int, Path(ge=1, le=SQL_INT_MAX)]

router = APIRouter()


class NewGroup(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=30)]
    description: Annotated[str, Field(max_length=100)] = ""
    is_default: bool = False


class GroupChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str | None, Field(min_length=1, max_length=30)] = None
    description: Annotated[str | None, Field(max_length=100)] = None
    is_default: bool | None = None


class Recipients(BaseModel):
    model_config = ConfigDict(extra="forbid")
    recipient_emails: Annotated[list[str], Field(min_length=1)]


def _engine(request: Request) -> sa.Engine:
    engine: sa.Engine = request.app.state.api.engine
    return engine


async def _body(request: Request, model: type[Any]) -> Any:
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as e:
        raise ApiError(400, problems_of(e)) from None


def _shape(g: Group, unsubscribes: int = 0) -> dict[str, Any]:
    return {
        "id": g.id,
        "name": g.name,
        "description": g.description,
        "is_default": g.is_default,
        "unsubscribes": unsubscribes,
    }


def _missing() -> ApiError:
    return ApiError(404, [("no such group", "group_id")])


async def _run(request: Request, work: Any, *, write: bool = False) -> Any:
    def call() -> Any:
        engine = _engine(request)
        with engine.begin() if write else engine.connect() as conn:
            return work(conn)

    return await asyncio.to_thread(call)


@router.post("/v3/asm/groups", status_code=201, summary="Create a group")
async def create_group(request: Request, _key: SuppressionsKey) -> dict[str, Any]:
    body: NewGroup = await _body(request, NewGroup)
    try:
        made = await _run(
            request,
            lambda c: suppressions.create_group(
                c, body.name, body.description, body.is_default
            ),
            write=True,
        )
    except sa.exc.IntegrityError:
        raise ApiError(400, [("a group of that name exists", "name")]) from None
    return _shape(made)


@router.get("/v3/asm/groups", summary="List groups")
async def list_groups(request: Request, _key: SuppressionsKey) -> list[dict[str, Any]]:
    def read(conn: sa.Connection) -> list[dict[str, Any]]:
        counts = suppressions.group_counts(conn)
        return [_shape(g, counts.get(g.id, 0)) for g in suppressions.groups(conn)]

    result: list[dict[str, Any]] = await _run(request, read)
    return result


@router.get("/v3/asm/groups/{group_id}", summary="Show a group")
async def show_group(
    group_id: GroupId, request: Request, _key: SuppressionsKey
) -> dict[str, Any]:
    def read(conn: sa.Connection) -> dict[str, Any] | None:
        g = suppressions.group(conn, group_id)
        if g is None:
            return None
        return _shape(g, suppressions.group_counts(conn).get(group_id, 0))

    found = await _run(request, read)
    if found is None:
        raise _missing()
    result: dict[str, Any] = found
    return result


@router.patch("/v3/asm/groups/{group_id}", summary="Change a group")
async def change_group(
    group_id: GroupId, request: Request, _key: SuppressionsKey
) -> dict[str, Any]:
    body: GroupChange = await _body(request, GroupChange)
    found = await _run(
        request,
        lambda c: suppressions.update_group(
            c, group_id, name=body.name, description=body.description,
            is_default=body.is_default,
        ),
        write=True,
    )
    if found is None:
        raise _missing()
    return _shape(found)


@router.delete("/v3/asm/groups/{group_id}", status_code=204, summary="Delete a group")
async def delete_group(
    group_id: GroupId, request: Request, _key: SuppressionsKey
) -> Response:
    if not await _run(
        request, lambda c: suppressions.delete_group(c, group_id), write=True
    ):
        raise _missing()
    return Response(status_code=204)


@router.get("/v3/asm/groups/{group_id}/suppressions", summary="A group's list")
async def group_list(
    group_id: GroupId, request: Request, _key: SuppressionsKey
) -> list[str]:
    def read(conn: sa.Connection) -> list[str] | None:
        if suppressions.group(conn, group_id) is None:
            return None
        entries = suppressions.entries(
            conn, suppressions.GROUP_UNSUBSCRIBE, group_id=group_id, limit=100_000
        )
        return [e.email for e in entries]

    found = await _run(request, read)
    if found is None:
        raise _missing()
    result: list[str] = found
    return result


@router.post(
    "/v3/asm/groups/{group_id}/suppressions",
    status_code=201,
    summary="Unsubscribe addresses from a group",
)
async def group_add(
    group_id: GroupId, request: Request, _key: SuppressionsKey
) -> dict[str, Any]:
    body: Recipients = await _body(request, Recipients)

    def store(conn: sa.Connection) -> list[str] | None:
        if suppressions.group(conn, group_id) is None:
            return None
        return suppressions.add(
            conn, suppressions.GROUP_UNSUBSCRIBE, body.recipient_emails,
            group_id=group_id,
        )

    added = await _run(request, store, write=True)
    if added is None:
        raise _missing()
    return {"recipient_emails": added}


@router.delete(
    "/v3/asm/groups/{group_id}/suppressions/{email}",
    status_code=204,
    summary="Resubscribe an address to a group",
)
async def group_remove(
    group_id: GroupId, email: str, request: Request, _key: SuppressionsKey
) -> Response:
    removed = await _run(
        request,
        lambda c: suppressions.remove(
            c, suppressions.GROUP_UNSUBSCRIBE, [email], group_id=group_id
        ),
        write=True,
    )
    if not removed:
        raise ApiError(404, [("the address is not on the group's list", "email")])
    return Response(status_code=204)


@router.post(
    "/v3/asm/suppressions/global", status_code=201, summary="Unsubscribe globally"
)
async def global_add(request: Request, _key: SuppressionsKey) -> dict[str, Any]:
    body: Recipients = await _body(request, Recipients)
    added = await _run(
        request,
        lambda c: suppressions.add(
            c, suppressions.UNSUBSCRIBE, body.recipient_emails
        ),
        write=True,
    )
    return {"recipient_emails": added}


@router.get(
    "/v3/asm/suppressions/global/{email}", summary="Is an address unsubscribed?"
)
async def global_show(
    email: str, request: Request, _key: SuppressionsKey
) -> dict[str, Any]:
    found = await _run(
        request,
        lambda c: suppressions.entries(c, suppressions.UNSUBSCRIBE, email=email),
    )
    return {"recipient_email": found[0].email} if found else {}


@router.delete(
    "/v3/asm/suppressions/global/{email}",
    status_code=204,
    summary="Remove a global unsubscribe",
)
async def global_remove(
    email: str, request: Request, _key: SuppressionsKey
) -> Response:
    removed = await _run(
        request,
        lambda c: suppressions.remove(c, suppressions.UNSUBSCRIBE, [email]),
        write=True,
    )
    if not removed:
        raise ApiError(404, [("the address is not unsubscribed", "email")])
    return Response(status_code=204)
