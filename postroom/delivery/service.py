"""Assembling the delivery engine from the configuration: the router
(DNS, static routes, smarthost, MTA-STS), the SMTP client, local
delivery to Maildirs, DKIM signing, and the spool that takes notices.
``cli/serve.py`` calls ``start_engine``; tests build engines with fakes
instead (``DeliveryEngine`` takes every part as an argument).
"""

from __future__ import annotations

import asyncio

import sqlalchemy as sa

from postroom.config import Config
from postroom.delivery.engine import Client, DeliveryEngine, Submitter
from postroom.delivery.local import LocalDelivery
from postroom.delivery.mtasts import MtaSts
from postroom.delivery.outcome import Route
from postroom.delivery.routing import Router
from postroom.delivery.smtp import ClientSettings, SmtpClient
from postroom.mailauth.dkim import DkimSigner
from postroom.mailbox.recipients import LocalRecipients
from postroom.queue.envelope import Envelope


def build_engine(config: Config, db: sa.Engine, notices: Submitter) -> DeliveryEngine:
    delivery = config.delivery
    router = Router(delivery, local_domains=config.smtp.local_domains)
    if delivery.mta_sts:
        router.secure = MtaSts.from_config(delivery, router.resolver).secure
    settings = ClientSettings(
        helo_name=delivery.helo_name or config.hostname,
        connect_timeout=delivery.connect_timeout,
        command_timeout=delivery.command_timeout,
        data_timeout=delivery.data_timeout,
        ca_file=delivery.tls_ca_file,
        allowed_networks=tuple(delivery.allowed_networks),
    )

    async def connect(route: Route) -> Client:
        return await SmtpClient.connect(route, settings)

    recipients = LocalRecipients.from_config(config, db)
    local = LocalDelivery(
        config.mailbox_dir,
        config.hostname,
        fsync=config.queue.fsync,
        recipients=recipients,
    )
    signer = DkimSigner(config.dkim_dir)
    return DeliveryEngine(
        config,
        db,
        router=router,
        connect=connect,
        notices=_Expanding(notices, recipients),
        local=local.deliver,
        sign=signer.sign,
    )


async def start_engine(
    config: Config, db: sa.Engine, notices: Submitter
) -> DeliveryEngine:
    engine = build_engine(config, db, notices)
    await engine.start()
    return engine


class _Expanding:
    """A Submitter that expands aliases among a notice's recipients, as
    the SMTP session does for what it queues: a notice to a sender that
    is an alias reaches the alias's targets (postroom/mailbox/addressing.py)."""

    def __init__(self, spool: Submitter, recipients: LocalRecipients) -> None:
        self.spool = spool
        self.recipients = recipients

    def submit(self, envelope: Envelope, content: bytes) -> asyncio.Future[None]:
        envelope.recipients = self.recipients.expand(envelope.recipients)
        return self.spool.submit(envelope, content)
