"""Double opt-in: the confirmation mail, its link, and the click.

Life of a contact under opt-in::

    unverified ──request──▶ pending ──click──▶ verified
        ▲                     │ (request again: a new mail, same state)
        └─ import, API ───────┘

``askable`` picks the contacts that are ``unverified`` or ``pending``
(and not suppressed), ``compose_all`` makes their confirmation mails,
and once the mails are queued ``mark_pending`` marks them
``pending``; verified, unsubscribed and bounced contacts get nothing.
The caller queues the mails (``queue_messages``): the API's worker
into its own spool, the CLI into a spool of its own
(``send_from_cli``), both through ``api/inject.py``, so a confirmation
is a queued message like any other: durable, retried, logged by queue
id.

The link is ``<confirm_url_base>/confirm/<token>``, the token signed
with the node secret (``campaigns/tokens.py``), carrying the contact id
and an expiry (``campaigns.confirm_ttl``). ``confirm`` turns a good
token into ``verified``. It leaves an ``unsubscribed`` or ``bounced``
contact alone: an old confirmation mail clicked after an unsubscribe
must not subscribe the person again, and a bounced address cannot have
clicked at all.

The mail's words are a built-in default (``SUBJECT``, ``TEXT``,
``HTML``) with the link and the contact's first name filled in.
XXX: not yet a stored template chosen by configuration, because the
campaigns part that owns per-campaign templates is not written yet;
when it is, a ``campaigns.confirm_template`` setting can name one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.policy
import email.utils
import html
import logging
from collections.abc import Sequence
from email.message import EmailMessage

import sqlalchemy as sa

from postroom import logs
from postroom.api import inject
from postroom.api.mailsend.compose import Composed
from postroom.campaigns import contacts, eligible, tokens
from postroom.campaigns.contacts import Contact
from postroom.config import Config
from postroom.errors import UnknownContact
from postroom.queue.envelope import Envelope
from postroom.store import contacts as store
from postroom.store.contacts import contacts as contacts_table

log = logging.getLogger(__name__)

PURPOSE = "confirm"
# Statuses that may be asked to confirm.
ASKABLE = ("unverified", "pending")

SUBJECT = "Please confirm your subscription"
TEXT = (
    "Hello{name},\n\n"
    "please confirm that you want to receive our mail by opening this link:\n\n"
    "{link}\n\n"
    "If you did not ask for this, ignore this message: without your\n"
    "confirmation we will not write to you again.\n"
)
HTML = (
    "<!DOCTYPE html>\n<html><body>\n<p>Hello{name},</p>\n"
    "<p>please confirm that you want to receive our mail:</p>\n"
    '<p><a href="{link}">Yes, subscribe me</a></p>\n'
    "<p>If you did not ask for this, ignore this message: without your "
    "confirmation we will not write to you again.</p>\n</body></html>\n"
)


def link(config: Config, contact_id: str, now: float) -> str:
    """The confirmation URL for *contact_id*, good for confirm_ttl."""
    secret = tokens.node_secret(config.data_dir)
    token = tokens.sign(secret, PURPOSE, contact_id,
                        int(now) + config.campaigns.confirm_ttl)
    return f"{config.campaigns.url_base(config.http)}/confirm/{token}"


def compose(config: Config, contact: Contact, url: str, index: int = 0) -> Composed:
    """The confirmation mail to *contact*."""
    sender = config.campaigns.sender_address(config.hostname)
    name = f" {contact.first_name}" if contact.first_name else ""
    message = EmailMessage()
    message["From"] = email.utils.formataddr(
        (config.campaigns.sender_name, sender)) if config.campaigns.sender_name \
        else sender
    message["To"] = contact.email
    message["Subject"] = SUBJECT
    message.set_content(TEXT.format(name=name, link=url))
    message.add_alternative(
        HTML.format(name=html.escape(name), link=html.escape(url, quote=True)),
        subtype="html")
    content = message.as_bytes(policy=email.policy.SMTP)
    return Composed(
        index=index,
        sender=sender,
        recipients=[("to", contact.email)],
        content=content,
        smtputf8=not contact.email.isascii() or not sender.isascii(),
        send_at=None,
    )


def askable(conn: sa.Connection, wanted: Sequence[Contact]) -> list[Contact]:
    """Those of *wanted* that may be asked to confirm (see the module
    docstring): unverified or pending, and not suppressed."""
    return [c for c in wanted
            if c.status in ASKABLE and not eligible.is_suppressed(conn, c.email)]


def mark_pending(conn: sa.Connection, asked: Sequence[Contact]) -> None:
    """Record that *asked* have a confirmation mail out. Called after
    the mails are queued: if it never runs, the contacts stay
    unverified and a click still confirms them."""
    # Conditional in SQL: a click may have verified a contact since
    # *asked* was read, and must not be undone.
    ids = [c.id for c in asked]
    for start in range(0, len(ids), 500):
        conn.execute(
            contacts_table.update()
            .where(contacts_table.c.id.in_(ids[start:start + 500]),
                   contacts_table.c.status == "unverified")
            .values(status="pending", updated_at=store.now()))


def compose_all(
    config: Config, asked: Sequence[Contact], now: float
) -> list[Composed]:
    return [compose(config, c, link(config, c.id, now), i)
            for i, c in enumerate(asked)]


def confirm(conn: sa.Connection, config: Config, token: str, now: float) -> Contact:
    """Verify the contact *token* names. BadToken, ExpiredToken, or
    UnknownContact (deleted since the mail went out)."""
    secret = tokens.node_secret(config.data_dir)
    contact_id = tokens.verify(secret, PURPOSE, token, now)
    contact = contacts.get(conn, contact_id)
    if contact.status in ASKABLE:
        contacts.set_status(conn, contact.id, "verified")
        log.info(logs.event("confirmed", contact=contact.id))
        contact = contacts.get(conn, contact.id)
    return contact


def prepare(
    config: Config, composed: list[Composed], origin: inject.Origin, now: float,
    auth_user: str | None = None,
) -> list[tuple[Envelope, bytes]]:
    """Envelopes and contents for the spool, through the API's path.
    *auth_user* replaces the envelope's ``apikey:<id>`` for mail that
    no key asked for (the CLI's)."""
    prepared = inject.prepare(
        composed, origin=origin, hostname=config.hostname, policy=None,
        meta={"optin": True}, now=now)
    if auth_user is None:
        return prepared
    return [(dataclasses.replace(env, auth_user=auth_user), content)
            for env, content in prepared]


async def queue_messages(
    spool: inject.Submitter, prepared: list[tuple[Envelope, bytes]],
    origin: inject.Origin, request_id: str,
) -> None:
    await inject.submit(spool, prepared)
    inject.log_received(prepared, origin, request_id)


def send_from_cli(
    config: Config, engine: sa.Engine, wanted: Sequence[Contact], now: float
) -> int:
    """Ask *wanted* to confirm, queueing the mails into the spool
    ``cli`` (durable when this returns); return how many were queued.

    Why a spool of our own and not the server's: a spool belongs to
    one process (its lock), and the running workers own theirs. The
    delivery engine finds messages by their rows, whatever spool holds
    them, and the server's start-up recovers ``cli`` like any spool
    no worker opens. XXX: its garbage is collected only when a CLI
    command opens it again, because no server process owns it; spent
    segments therefore wait for the next ``contacts verify``.
    """
    from postroom.queue.spool import Spool

    origin = inject.Origin("127.0.0.1", "cli", "cli")
    with engine.connect() as conn:
        asked = askable(conn, wanted)
    if not asked:
        return 0
    prepared = prepare(config, compose_all(config, asked, now), origin, now,
                       auth_user="cli")

    async def run() -> None:
        spool = Spool(config.spool_path, engine, name="cli",
                      fsync=config.queue.fsync,
                      segment_size=config.queue.segment_size)
        await spool.start()
        try:
            await queue_messages(spool, prepared, origin, "cli")
        finally:
            await spool.close()

    # No transaction of ours is open meanwhile: the spool writes its
    # rows to the same database, and SQLite has one writer at a time.
    asyncio.run(run())
    with engine.begin() as conn:
        mark_pending(conn, asked)
    return len(prepared)


def find(conn: sa.Connection, email_address: str) -> Contact:
    try:
        return contacts.get_by_email(conn, email_address)
    except UnknownContact:
        raise UnknownContact(f"no such contact: {email_address}") from None
