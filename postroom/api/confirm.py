"""``GET /confirm/<token>``: the page a confirmation link opens.

Not part of SendGrid's API and not behind a key: the person clicking
has only the link, whose signature is the authorization
(``campaigns/tokens.py``). The answers are small HTML pages, not
SendGrid's JSON, because a person reads them:

- 200 "confirmed" (also when it already was: a second click, or a
  mail scanner that fetched the link first, must not show an error);
- 200 "unsubscribed" for a contact that left meanwhile; the click does
  not bring it back (``campaigns/optin.py`` says why);
- 400 for a genuine link whose time has passed;
- 404 for anything else: a changed or made-up token, or a contact
  deleted since. One answer for all, so that a tamperer learns nothing.

XXX: the click confirms on GET. Link scanners that follow every URL in
a mail could confirm an address no person asked for; a page with a
button (POST) would stop them, at the cost of a second click for
everyone. SendGrid and most providers confirm on GET; so do we, for now.
"""

from __future__ import annotations

import asyncio
import html

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from postroom.api.context import ApiContext
from postroom.campaigns import optin, tokens
from postroom.campaigns.contacts import Contact
from postroom.errors import UnknownContact

router = APIRouter()

PAGE = (
    "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
    "<title>{title}</title></head>\n<body><h1>{title}</h1>\n<p>{text}</p>"
    "</body></html>\n"
)


def page(status: int, title: str, text: str) -> HTMLResponse:
    return HTMLResponse(
        PAGE.format(title=html.escape(title), text=html.escape(text)),
        status_code=status,
        # The page names an address: keep it out of shared caches.
        headers={"Cache-Control": "no-store"},
    )


@router.get("/confirm/{token}", include_in_schema=False)
async def confirm(token: str, request: Request) -> HTMLResponse:
    context: ApiContext = request.app.state.api

    def work() -> Contact:
        with context.engine.begin() as conn:
            return optin.confirm(conn, context.config, token, context.clock())

    try:
        contact = await asyncio.to_thread(work)
    except tokens.ExpiredToken:
        return page(400, "Link expired",
                    "This confirmation link has expired. Please sign up again.")
    except (tokens.BadToken, UnknownContact):
        return page(404, "Link not valid", "This confirmation link is not valid.")
    if contact.status == "verified":
        return page(200, "Subscription confirmed",
                    f"Thank you: {contact.email} is confirmed.")
    return page(200, "Not subscribed",
                f"{contact.email} is {contact.status}; nothing was changed.")
