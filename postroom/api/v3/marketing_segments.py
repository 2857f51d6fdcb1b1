"""``/v3/marketing/segments``: saved filters over contacts. Needs the
``marketing`` scope.

A segment is a name, a condition tree (``campaigns/segments.py``;
SendGrid takes SGQL text in ``query_dsl``, we take the tree in
``conditions``) and an optional ``parent_list_id``. The tree is
checked when saved: a 400 names the bad node by its path
(``conditions.and.1.op``). Reading one answers with its current
``contacts_count`` and a sample of up to 50 contacts, as SendGrid does.
"""

from __future__ import annotations

from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from postroom.api import marketing
from postroom.api.auth import MarketingKey
from postroom.campaigns import contacts, segments

router = APIRouter()


class SegmentBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=100)]
    conditions: dict[str, Any]
    parent_list_id: str | None = None


@router.post("/v3/marketing/segments", status_code=201,
             summary="Create a segment",
             openapi_extra=marketing.body(SegmentBody))
async def create(request: Request, _key: MarketingKey) -> dict[str, Any]:
    body = await marketing.parse(request, SegmentBody)

    def work(conn: sa.Connection) -> segments.Segment:
        return segments.create(conn, body.name, body.conditions,
                               body.parent_list_id, contacts.field_types(conn))

    made = await marketing.write(request, work)
    return made.as_json()


@router.get("/v3/marketing/segments", summary="List segments")
async def list_all(request: Request, _key: MarketingKey) -> dict[str, Any]:
    found = await marketing.read(request, segments.list_all)
    return {"results": [s.as_json() for s in found]}


@router.get("/v3/marketing/segments/{segment_id}", summary="Get a segment")
async def get(
    segment_id: str, request: Request, _key: MarketingKey
) -> dict[str, Any]:
    def work(conn: sa.Connection) -> dict[str, Any]:
        segment = segments.get(conn, segment_id)
        where = segments.where(segment, contacts.field_types(conn))
        sample = contacts.search(conn, where, limit=50)
        return {**segment.as_json(),
                "contacts_count": contacts.count(conn, where),
                "contacts_sample": [c.as_json() for c in sample]}

    return await marketing.read(request, work)


@router.delete("/v3/marketing/segments/{segment_id}", status_code=204,
               summary="Delete a segment")
async def delete(
    segment_id: str, request: Request, _key: MarketingKey
) -> Response:
    await marketing.write(request, lambda c: segments.delete(c, segment_id))
    return Response(status_code=204)
