"""``/v3/marketing/lists``: create, list, read, rename, delete lists,
and add or remove members. Needs the ``marketing`` scope.

SendGrid's paths and shapes. Deleting a list keeps its contacts
(SendGrid's default, ``delete_contacts=false``; we do not offer
``true``: deleting people is ``DELETE /v3/marketing/contacts``, one
deliberate step). Adding members by id is ours: SendGrid adds through
``PUT /v3/marketing/contacts`` with ``list_ids``, which works here too.
"""

from __future__ import annotations

from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from postroom.api import marketing
from postroom.api.auth import MarketingKey
from postroom.campaigns import contacts, lists
from postroom.errors import UnknownContact

router = APIRouter()


class ListBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=100)]


class ListMembers(BaseModel):
    model_config = ConfigDict(extra="forbid")
    contact_ids: Annotated[list[str], Field(min_length=1, max_length=30000)]


@router.post("/v3/marketing/lists", status_code=201, summary="Create a list",
             openapi_extra=marketing.body(ListBody))
async def create(request: Request, _key: MarketingKey) -> dict[str, Any]:
    body = await marketing.parse(request, ListBody)
    made = await marketing.write(request, lambda c: lists.create(c, body.name))
    return made.as_json()


@router.get("/v3/marketing/lists", summary="List lists")
async def list_all(request: Request, _key: MarketingKey) -> dict[str, Any]:
    found = await marketing.read(request, lists.list_all)
    return {"result": [item.as_json() for item in found]}


@router.get("/v3/marketing/lists/{list_id}", summary="Get a list")
async def get(list_id: str, request: Request, _key: MarketingKey) -> dict[str, Any]:
    found = await marketing.read(request, lambda c: lists.get(c, list_id))
    return found.as_json()


@router.patch("/v3/marketing/lists/{list_id}", summary="Rename a list",
             openapi_extra=marketing.body(ListBody))
async def rename(
    list_id: str, request: Request, _key: MarketingKey
) -> dict[str, Any]:
    body = await marketing.parse(request, ListBody)
    done = await marketing.write(
        request, lambda c: lists.rename(c, list_id, body.name))
    return done.as_json()


@router.delete("/v3/marketing/lists/{list_id}", status_code=204,
               summary="Delete a list (its contacts stay)")
async def delete(list_id: str, request: Request, _key: MarketingKey) -> Response:
    await marketing.write(request, lambda c: lists.delete(c, list_id))
    return Response(status_code=204)


@router.post("/v3/marketing/lists/{list_id}/contacts", status_code=201,
             summary="Add contacts to a list",
             openapi_extra=marketing.body(ListMembers))
async def add(list_id: str, request: Request, _key: MarketingKey) -> dict[str, Any]:
    body = await marketing.parse(request, ListMembers)

    def work(conn: sa.Connection) -> int:
        for i, contact_id in enumerate(body.contact_ids):
            try:
                contacts.get(conn, contact_id)
            except UnknownContact as e:
                raise UnknownContact(str(e), f"contact_ids.{i}") from None
        return contacts.add_members(conn, list_id, body.contact_ids)

    added = await marketing.write(request, work)
    return {"added_count": added}


@router.delete("/v3/marketing/lists/{list_id}/contacts", status_code=202,
               summary="Remove contacts from a list")
async def remove(
    list_id: str, request: Request, _key: MarketingKey,
    contact_ids: str | None = None,
) -> dict[str, Any]:
    wanted = marketing.ids_param(contact_ids, "contact_ids")

    def work(conn: sa.Connection) -> int:
        lists.get(conn, list_id)
        return contacts.remove_members(conn, list_id, wanted)

    removed = await marketing.write(request, work)
    return {"removed_count": removed}
