"""The mailbox services of ``postroom serve`` share SMTP's view of the
quotas: IMAP APPEND and COPY are refused over quota only if the
``MailStore`` they are given knows the limits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from postroom.cli import serve
from postroom.config import Config, Listener
from postroom.errors import QuotaExceeded
from postroom.mailbox.recipients import LocalRecipients
from postroom.server.pop3d import Pop3Server
from postroom.store import db, users

USER = "alice@example.test"


async def test_mailbox_servers_get_a_store_that_enforces_quotas(
    tmp_path: Path,
) -> None:
    config = Config(data_dir=str(tmp_path))
    config.smtp.local_domains = ["example.test"]
    config.pop3.listeners = [Listener("pop3", "127.0.0.1", 0)]
    config.imap.enabled = False
    config.queue.fsync = False
    engine = db.create_engine(config.database_url)
    with engine.begin() as conn:
        users.add(conn, USER, "x", quota=100)
    recipients = LocalRecipients.from_config(config, engine)

    no_logins: Any = None
    [pop3] = await serve._start_mailbox_servers(
        config, {}, no_logins, None, 1, recipients.store
    )
    try:
        assert isinstance(pop3, Pop3Server)
        with pop3.store.open(USER) as inbox, pytest.raises(QuotaExceeded):
            inbox.append(b"Subject: big\r\n\r\n" + b"x" * 200)
    finally:
        await pop3.stop()
        engine.dispose()
