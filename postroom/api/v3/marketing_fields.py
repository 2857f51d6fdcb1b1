"""``/v3/marketing/field_definitions``: custom field definitions.
Needs the ``marketing`` scope.

SendGrid's shapes: a field has ``id``, ``name`` and ``field_type``
(``Text``, ``Number``, ``Date``; we accept any case and answer in
SendGrid's). The id is the name: names are unique and immutable here,
so a second key would only add a lookup. Reserved fields (the
contact's own columns) are listed as SendGrid lists them.
"""

from __future__ import annotations

from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from postroom.api import marketing
from postroom.api.auth import MarketingKey
from postroom.campaigns import contacts

router = APIRouter()

RESERVED = (("email", "Text"), ("first_name", "Text"), ("last_name", "Text"),
            ("status", "Text"), ("created_at", "Date"), ("updated_at", "Date"),
            ("verified_at", "Date"))


class FieldDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=50)]
    field_type: str


def _shape(name: str, kind: str) -> dict[str, str]:
    return {"id": name, "name": name, "field_type": kind.capitalize()}


@router.get("/v3/marketing/field_definitions", summary="List custom fields")
async def list_fields(request: Request, _key: MarketingKey) -> dict[str, Any]:
    types = await marketing.read(request, contacts.field_types)
    return {
        "custom_fields": [_shape(n, t) for n, t in types.items()],
        "reserved_fields": [_shape(n, t) for n, t in RESERVED],
    }


@router.post("/v3/marketing/field_definitions", status_code=201,
             summary="Define a custom field",
             openapi_extra=marketing.body(FieldDefinition))
async def create(request: Request, _key: MarketingKey) -> dict[str, str]:
    body = await marketing.parse(request, FieldDefinition)
    kind = body.field_type.lower()

    def work(conn: sa.Connection) -> None:
        contacts.define_field(conn, body.name, kind)

    await marketing.write(request, work)
    return _shape(body.name, kind)


@router.delete("/v3/marketing/field_definitions/{field_id}", status_code=204,
               summary="Delete a custom field")
async def delete(field_id: str, request: Request, _key: MarketingKey) -> Response:
    await marketing.write(request, lambda c: contacts.delete_field(c, field_id))
    return Response(status_code=204)
