"""``POST /v3/mail/send``: SendGrid's v3 Mail Send.

The steps, cheapest rejection first:

1. the key and its ``mail.send`` scope (``auth.require``), before the
   body is read; the body's size was bounded by the app's middleware;
2. the body's shape (``mailsend/model.py``): 400 with one error per
   field, each with its path;
3. the rules across fields and the node's limits (``checks.py``): 400;
4. with ``template_id``, the stored template rendered for each
   personalization (``templating.py``; 400 for an unknown id or data
   the template cannot use);
5. one MIME message per personalization (``compose.py``), each within
   ``smtp.max_message_size`` (413), and recipients of local domains
   that SMTP would refuse (400, naming the field);
6. sandbox mode stops here: 200 with an empty body and nothing queued,
   as SendGrid answers;
7. recipients on a suppression list are dropped, each with a
   ``dropped`` event (``mailsend/suppress.py``);
8. the queue (``inject.py``): 202 once every message is durable, with
   ``X-Message-Id``, the first message's queue id, which the log lines
   of all the request's messages carry as ``request=``.

If the spool fails, 503: nothing was promised, the client retries.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request, Response
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from postroom import logs
from postroom.api import inject
from postroom.api.auth import MailSendKey
from postroom.api.context import ApiContext
from postroom.api.errors import ApiError, problems_of
from postroom.api.mailsend import checks, suppress, templating
from postroom.api.mailsend.compose import Composed, compose
from postroom.api.mailsend.model import MailSend
from postroom.campaigns.rendering import Rendered
from postroom.errors import SpoolError
from postroom.store.api_keys import ApiKey

log = logging.getLogger(__name__)

router = APIRouter()


@router.post(
    "/v3/mail/send",
    status_code=202,
    summary="Send mail (SendGrid v3 Mail Send)",
    response_class=Response,
    responses={
        200: {"description": "sandbox mode: valid, nothing sent"},
        202: {"description": "queued; X-Message-Id names the request"},
        400: {"description": "invalid request, errors name each field"},
        401: {"description": "missing or invalid API key"},
        403: {"description": "the key lacks the mail.send scope"},
        413: {"description": "request or message too large"},
        503: {"description": "the queue could not store the mail; retry"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": "#/components/schemas/MailSend"}
                }
            },
        }
    },
)
async def mail_send(
    request: Request, key: MailSendKey
) -> Response:
    ctx: ApiContext = request.app.state.api
    client = request.client.host if request.client else ""

    # Shape, then the rules across fields.
    # Parsing and building run in a thread: a 30 MB request costs a
    # good fraction of a second, which the worker's SMTP sessions would
    # otherwise wait out (the GIL still switches every few ms).
    raw = await request.body()
    try:
        mail = await asyncio.to_thread(MailSend.model_validate_json, raw)
    except ValidationError as e:
        raise _refused(client, key, ApiError(400, problems_of(e))) from None
    now = ctx.clock()
    problems = checks.check(mail, ctx.config.http, now)
    if problems:
        raise _refused(
            client, key, ApiError(400, [(p.message, p.field) for p in problems])
        )

    # The messages (from the template, if one is named), and what SMTP
    # would refuse about their recipients.
    rendered: list[Rendered | None] = [None] * len(mail.personalizations)
    if mail.template_id is not None:
        parts, failures = await asyncio.to_thread(
            templating.render_all, ctx.engine, mail
        )
        if failures:
            raise _refused(client, key, ApiError(400, failures))
        rendered = list(parts)
    messages = await asyncio.to_thread(_compose_all, mail, rendered)
    limit = ctx.config.smtp.max_message_size
    for m in messages:
        if len(m.content) > limit:
            raise _refused(
                client,
                key,
                ApiError(
                    413,
                    [
                        (
                            f"the message would be larger than {limit} bytes",
                            f"personalizations.{m.index}",
                        )
                    ],
                ),
            )
    refusals = await asyncio.to_thread(inject.local_refusals, ctx.policy, messages)
    if refusals:
        raise _refused(client, key, ApiError(400, refusals))
    if mail.sandbox:
        return Response(status_code=200)

    # Into the queue.
    origin = inject.Origin(client=client, key_id=key.id, listener=ctx.listener)
    prepared = await asyncio.to_thread(
        inject.prepare,
        messages,
        origin=origin,
        hostname=ctx.config.hostname,
        policy=ctx.policy,
        meta=_meta(mail, key),
        now=now,
    )
    request_id = prepared[0][0].queue_id
    for envelope, _ in prepared:
        assert envelope.api is not None
        envelope.api["request"] = request_id
    prepared, dropped = await asyncio.to_thread(
        suppress.drop, ctx.engine, prepared, suppress.group_of(mail.asm)
    )
    try:
        await inject.submit(ctx.spool, prepared)
    except SpoolError as e:
        log.error(
            logs.event("rejected", request_id, client=client, reason=f"spool: {e}")
        )
        raise ApiError(503, [("the mail could not be queued; try again", None)]) from e
    inject.log_received(prepared, origin, request_id)
    if dropped:
        try:
            await asyncio.to_thread(suppress.record, ctx.engine, dropped)
        except SQLAlchemyError as e:
            # The mail is queued and the 202 is owed: a retry after a
            # 500 would send it twice. The log lines below still say.
            # XXX: the events are lost; a busy database is rare here.
            log.error("%s: cannot store the dropped events: %s", request_id, e)
        for row in dropped:
            log.info(
                logs.event(
                    "dropped", row[2], to=f"<{row[4]}>", reason=row[6],
                    request=request_id,
                )
            )
    return Response(status_code=202, headers={"X-Message-Id": request_id})


def _compose_all(
    mail: MailSend, rendered: list[Rendered | None]
) -> list[Composed]:
    messages = []
    for i, (p, parts) in enumerate(zip(mail.personalizations, rendered, strict=True)):
        if not (p.subject or mail.subject or (parts and parts.subject)):
            raise ApiError(400, [("The subject is required: the template has "
                                  "none, so give one", "subject")])
        try:
            messages.append(compose(mail, i, p, parts))
        except (ValueError, TypeError) as e:
            # The email package refused something the model let
            # through; name the personalization rather than fail.
            raise ApiError(400, [(f"cannot build the message: {e}",
                                  f"personalizations.{i}")]) from None
    return messages


def _meta(mail: MailSend, key: ApiKey) -> dict[str, object]:
    """What the envelope keeps of the request for later features
    (events, tracking, batches, suppression groups); None values are
    dropped to keep envelopes small."""
    meta: dict[str, object] = {
        "key": key.id,
        "categories": mail.categories,
        "batch_id": mail.batch_id,
        "asm": mail.asm,
        "ip_pool_name": mail.ip_pool_name,
        "tracking_settings": mail.tracking_settings,
        "mail_settings": mail.mail_settings.model_dump(exclude_none=True)
        if mail.mail_settings
        else None,
    }
    return {k: v for k, v in meta.items() if v is not None}


def _refused(client: str, key: ApiKey, error: ApiError) -> ApiError:
    # One line per refused request, naming the first problem.
    message, field = error.problems[0]
    log.info(
        logs.event(
            "rejected",
            client=client,
            key=key.id,
            status=error.status,
            field=field,
            reason=message[:200],
            problems=len(error.problems),
        )
    )
    return error
