"""Error answers in SendGrid's shape, and the one place they are made.

Every error the API returns has the body SendGrid's clients parse::

    {"errors": [{"message": "...", "field": "personalizations.0.to",
                 "help": null}]}

``field`` is a dotted path into the request (list indexes as numbers)
or null when the problem is not about one field; ``help`` is always
present, null unless we have something useful to point at.

Endpoints raise ``ApiError``; ``install`` converts it, FastAPI's own
HTTP errors (404 for an unknown path, 405) and pydantic's validation
errors into that shape, so no answer ever carries FastAPI's
``{"detail": ...}``. Anything else is our bug: 500 with a generic
message, the exception logged once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

log = logging.getLogger(__name__)

# The largest integer the databases store (SQLite and PostgreSQL BIGINT):
# ids, offsets and cursors from a client are bounded by it, so that a
# huge number is a 400 rather than an overflow deep in the driver.
SQL_INT_MAX = 2**63 - 1


class ApiError(Exception):
    """An answer other than success: *status* and its problems, each
    ``(message, field)``."""

    def __init__(
        self,
        status: int,
        problems: Sequence[tuple[str, str | None]],
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(problems[0][0] if problems else str(status))
        self.status = status
        self.problems = list(problems)
        self.headers = headers


def body(problems: Iterable[tuple[str, str | None]]) -> dict[str, Any]:
    return {
        "errors": [
            {"message": message, "field": field, "help": None}
            for message, field in problems
        ]
    }


def response(error: ApiError) -> JSONResponse:
    return JSONResponse(body(error.problems), error.status, headers=error.headers)


def path(loc: Iterable[int | str]) -> str | None:
    """A pydantic location as SendGrid writes field paths."""
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or None


def problems_of(error: ValidationError | RequestValidationError) -> list[
    tuple[str, str | None]
]:
    """One problem per pydantic error, with its field path."""
    found = []
    for item in error.errors():
        message = str(item.get("msg", "invalid"))
        # "Value error, must be base64 encoded" -> "must be base64 encoded"
        message = message.removeprefix("Value error, ")
        found.append((message, path(item.get("loc", ()))))
    return found


def install(app: FastAPI) -> None:
    """Make every error answer of *app* take SendGrid's shape."""

    async def api_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return response(exc)

    async def http_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return response(
            ApiError(
                exc.status_code,
                [(str(exc.detail), None)],
                dict(exc.headers) if exc.headers else None,
            )
        )

    async def invalid(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return response(ApiError(400, problems_of(exc)))

    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        # The top of a request: log once, answer 500, keep serving.
        log.error("api failure path=%s error=%r", request.url.path, exc)
        return response(ApiError(500, [("internal error", None)]))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(Exception, crashed)
