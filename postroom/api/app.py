"""The ASGI application: routes, error shape, body limit, OpenAPI.

``create_app(context)`` returns a FastAPI app serving one endpoint per
module under ``v3/`` (KumoMTA's layout: the path of an endpoint tells
which file holds it). The app keeps no state of its own beyond
``app.state.api`` (``ApiContext``), so a test can build one over a
temporary spool and call it in-process through httpx's ASGI transport.

Request bodies are read whole by a small ASGI middleware before any
route sees them, and refused with 413 past ``http.max_request_size``
(SendGrid's 30 MB), without buffering more than that. The
``Content-Length`` is checked first, so an honest client with a huge
body is answered before it sends it.

OpenAPI: ``/openapi.json``, with the Mail Send body's schema taken from
the pydantic model (``mailsend/model.py``) so the document and the
validation cannot disagree. The interactive pages (``/docs``) are off:
they load their scripts from a CDN, and the node talks to nothing
beyond loopback.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from postroom import __version__
from postroom.api import confirm, errors, marketing
from postroom.api.context import ApiContext
from postroom.api.mailsend.model import MailSend
from postroom.api.v3 import (
    api_keys,
    asm_groups,
    events,
    mail_send,
    marketing_contacts,
    marketing_fields,
    marketing_lists,
    marketing_segments,
    suppression_lists,
    webhooks,
)


def create_app(context: ApiContext) -> FastAPI:
    app = FastAPI(
        title="Postroom API",
        version=__version__,
        description="SendGrid-compatible v3 API of a Postroom node.",
        docs_url=None,
        redoc_url=None,
    )
    app.state.api = context
    errors.install(app)
    app.include_router(mail_send.router)
    app.include_router(api_keys.router)
    # The event store, webhook endpoints, suppression lists.
    for module in (events, webhooks, suppression_lists, asm_groups):
        app.include_router(module.router)
    for endpoint in (marketing_contacts, marketing_lists, marketing_fields,
                     marketing_segments):
        app.include_router(endpoint.router)
    # The page a confirmation link opens (double opt-in); no key.
    app.include_router(confirm.router)
    app.add_middleware(BodyLimit, limit=context.config.http.max_request_size)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        body = MailSend.model_json_schema(
            by_alias=True, ref_template="#/components/schemas/{model}"
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(body.pop("$defs", {}))
        components["MailSend"] = body
        # The marketing endpoints' bodies (contacts, lists, segments).
        components.update(marketing.SCHEMAS)
        app.openapi_schema = schema
    return app.openapi_schema


class BodyLimit:
    """Refuse request bodies larger than *limit* bytes with 413 (see
    the module docstring); pass everything else on unchanged."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._too_large(send)
            return

        # Read it all (bounded), then replay it to the app.
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._too_large(send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                # After the body, only a disconnect can follow.
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks),
                    "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send) -> None:
        response = errors.response(
            errors.ApiError(
                413,
                [(f"the request body is larger than {self.limit} bytes", None)],
            )
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": response.raw_headers,
            }
        )
        await send({"type": "http.response.body", "body": response.body})
