"""``/v3/marketing/contacts``: upsert, read, search, count, delete,
and ask to confirm. Needs the ``marketing`` scope.

SendGrid's shapes where they exist: ``PUT`` takes ``{"list_ids",
"contacts": [...]}`` and answers 202 with a ``job_id``. SendGrid runs
the upsert as a background job; ours is done before the answer (a
batch is at most ``MAX_BATCH`` contacts, well under a second), so the
job id names work already finished and the answer also carries the
counts. Every item is checked before any is stored: one bad address
refuses the batch with a 400 naming ``contacts.<i>.email``, as
SendGrid does.

Differences, deliberate: search takes our JSON condition tree
(``campaigns/segments.py``) as ``{"conditions": ...}`` rather than
SendGrid's SGQL text, which would need a parser of its own; and
``POST /v3/marketing/contacts/confirm`` (ours) queues confirmation
mails (double opt-in) into this worker's spool.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from postroom.api import inject, marketing
from postroom.api.auth import MarketingKey
from postroom.api.context import ApiContext
from postroom.api.errors import SQL_INT_MAX, ApiError
from postroom.campaigns import contacts, lists, optin, segments
from postroom.campaigns.contacts import ContactInput
from postroom.errors import ContactError

router = APIRouter()
MAX_BATCH = 30000  # SendGrid's limit per PUT
MAX_PAGE = 1000

Name = Annotated[str | None, Field(max_length=100)]
Value = str | int | float | None


class MarketingContact(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: Annotated[str, Field(min_length=3, max_length=254)]
    first_name: Name = None
    last_name: Name = None
    custom_fields: dict[str, Value] = Field(default_factory=dict)


class ContactsUpsert(BaseModel):
    model_config = ConfigDict(extra="forbid")
    list_ids: list[str] = Field(default_factory=list)
    contacts: Annotated[
        list[MarketingContact], Field(min_length=1, max_length=MAX_BATCH)]


class ContactsSearch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    conditions: dict[str, Any]
    list_id: str | None = None


class ContactsConfirm(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: Annotated[list[str], Field(min_length=1, max_length=1000)]


@router.put("/v3/marketing/contacts", status_code=202,
            summary="Add or update contacts",
             openapi_extra=marketing.body(ContactsUpsert))
async def upsert(request: Request, _key: MarketingKey) -> dict[str, Any]:
    body = await marketing.parse(request, ContactsUpsert)

    def work(conn: sa.Connection) -> contacts.UpsertResult:
        types = contacts.field_types(conn)
        items, problems = [], []
        for i, item in enumerate(body.contacts):
            try:
                items.append(ContactInput(
                    contacts.normalize_email(item.email, f"contacts.{i}.email"),
                    item.first_name, item.last_name,
                    contacts.check_custom(types, item.custom_fields,
                                          f"contacts.{i}.custom_fields")))
            except ContactError as e:
                problems.append((str(e), e.field))
        if problems:
            raise ApiError(400, problems)
        for n, list_id in enumerate(body.list_ids):
            try:
                lists.get(conn, list_id)
            except ContactError:
                raise ApiError(
                    404, [(f"no such list: {list_id}", f"list_ids.{n}")]) from None
        return contacts.upsert(conn, items, body.list_ids, types)

    done = await marketing.write(request, work)
    return {"job_id": str(uuid.uuid4()), "created_count": done.created,
            "updated_count": done.updated, "contact_ids": done.ids}


@router.get("/v3/marketing/contacts", summary="List contacts")
async def list_contacts(
    request: Request, _key: MarketingKey, limit: int = 50, offset: int = 0,
) -> dict[str, Any]:
    if not 1 <= limit <= MAX_PAGE or not 0 <= offset <= SQL_INT_MAX:
        raise ApiError(400, [(f"limit is 1 to {MAX_PAGE}, offset 0 or more",
                              "limit")])

    def work(conn: sa.Connection) -> dict[str, Any]:
        found = contacts.search(conn, limit=limit, offset=offset)
        return marketing.page([c.as_json() for c in found], contacts.count(conn))

    return await marketing.read(request, work)


@router.get("/v3/marketing/contacts/count", summary="Count contacts")
async def count(request: Request, _key: MarketingKey) -> dict[str, int]:
    total = await marketing.read(request, contacts.count)
    return {"contact_count": total}


@router.post("/v3/marketing/contacts/search", summary="Search contacts",
             openapi_extra=marketing.body(ContactsSearch))
async def search(request: Request, _key: MarketingKey) -> dict[str, Any]:
    body = await marketing.parse(request, ContactsSearch)

    def work(conn: sa.Connection) -> dict[str, Any]:
        where = segments.to_sql(body.conditions, contacts.field_types(conn))
        if body.list_id is not None:
            where = sa.and_(segments.members_of(body.list_id), where)
        found = contacts.search(conn, where, limit=50)
        return marketing.page([c.as_json() for c in found],
                              contacts.count(conn, where))

    return await marketing.read(request, work)


@router.get("/v3/marketing/contacts/{contact_id}", summary="Get a contact")
async def get(contact_id: str, request: Request, _key: MarketingKey) -> dict[str, Any]:
    found = await marketing.read(request, lambda c: contacts.get(c, contact_id))
    return found.as_json()


@router.delete("/v3/marketing/contacts", status_code=202,
               summary="Delete contacts")
async def delete(
    request: Request, _key: MarketingKey, ids: str | None = None,
) -> dict[str, Any]:
    wanted = marketing.ids_param(ids, "ids")
    deleted = await marketing.write(request, lambda c: contacts.delete(c, wanted))
    return {"job_id": str(uuid.uuid4()), "deleted_count": deleted}


@router.post("/v3/marketing/contacts/confirm", status_code=202,
             summary="Send confirmation mails (double opt-in)",
             openapi_extra=marketing.body(ContactsConfirm))
async def confirm(request: Request, key: MarketingKey) -> dict[str, int]:
    body = await marketing.parse(request, ContactsConfirm)
    context: ApiContext = request.app.state.api
    config = context.config
    now = context.clock()

    def choose(conn: sa.Connection) -> list[contacts.Contact]:
        wanted = []
        for i, contact_id in enumerate(body.ids):
            try:
                wanted.append(contacts.get(conn, contact_id))
            except ContactError:
                raise ApiError(404, [(f"no such contact: {contact_id}",
                                      f"ids.{i}")]) from None
        return optin.askable(conn, wanted)

    asked = await marketing.read(request, choose)
    origin = inject.Origin(
        request.client.host if request.client else "", key.id, context.listener)
    prepared = await asyncio.to_thread(
        lambda: optin.prepare(config, optin.compose_all(config, asked, now),
                              origin, now))
    if prepared:
        await optin.queue_messages(context.spool, prepared, origin,
                                   str(uuid.uuid4()))
        await marketing.write(request, lambda c: optin.mark_pending(c, asked))
    return {"queued_count": len(prepared)}
