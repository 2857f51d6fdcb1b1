"""What the ``/v3/marketing/...`` endpoints share: reading a JSON body
into a model, running database work off the event loop, and turning
``ContactError`` into SendGrid's error body.

Every endpoint checks the key first (``MarketingKey``), then parses
the body (400 with field paths), then does its work in a thread: the
work is SQLite reads and writes, which may wait for another process's
commit, and must not stall the worker's SMTP sessions meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from fastapi import Request
from pydantic import BaseModel, ValidationError

from postroom.api.errors import ApiError, problems_of
from postroom.errors import ContactError, UnknownContact

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

# The request bodies' schemas by model name, for ``app._openapi`` to
# put under ``components``: the endpoints read their bodies themselves,
# after the key check (as Mail Send does), so FastAPI cannot see them.
SCHEMAS: dict[str, Any] = {}


def body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for an endpoint whose body is *model*."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    SCHEMAS.update(schema.pop("$defs", {}))
    SCHEMAS[model.__name__] = schema
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


async def parse(request: Request, model: type[M]) -> M:
    """The body as *model*, or ApiError 400 naming each bad field."""
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as e:
        raise ApiError(400, problems_of(e)) from None


async def read(request: Request, work: Callable[[sa.Connection], T]) -> T:
    """*work* in a read transaction, in a thread."""
    return await _run(request, work, write=False)


async def write(request: Request, work: Callable[[sa.Connection], T]) -> T:
    """*work* in a write transaction, in a thread; committed if it
    returns, rolled back if it raises."""
    return await _run(request, work, write=True)


async def _run(
    request: Request, work: Callable[[sa.Connection], T], *, write: bool
) -> T:
    engine: sa.Engine = request.app.state.api.engine

    def run() -> T:
        if write:
            with engine.begin() as conn:
                return work(conn)
        with engine.connect() as conn:
            return work(conn)

    try:
        return await asyncio.to_thread(run)
    except UnknownContact as e:
        raise ApiError(404, [(str(e), e.field)]) from None
    except ContactError as e:
        raise ApiError(400, [(str(e), e.field)]) from None


def ids_param(raw: str | None, name: str) -> list[str]:
    """A comma-separated query parameter, as SendGrid takes ids."""
    ids = [part.strip() for part in (raw or "").split(",") if part.strip()]
    if not ids:
        raise ApiError(400, [(f"{name} must name at least one id", name)])
    return ids


def page(items: list[Any], total: int) -> dict[str, Any]:
    return {"result": items, "contact_count": total}
