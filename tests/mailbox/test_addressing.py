"""Addresses to mailboxes: accounts, aliases, catch-all, sub-addresses,
postmaster; RCPT answers and quotas; expansion at queue time; local
delivery through the resolver."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from postroom.delivery.local import LocalDelivery
from postroom.delivery.outcome import BOUNCED, DEFERRED, DELIVERED
from postroom.errors import UserExists
from postroom.mailbox.addressing import Resolution, Resolver
from postroom.mailbox.recipients import (
    LOOKUP_FAILED,
    MAILBOX_FULL,
    UNKNOWN_USER,
    LocalRecipients,
)
from postroom.mailbox.store import MailStore
from postroom.queue.envelope import Envelope, Recipient
from postroom.store import aliases, db, users

DOMAIN = "example.test"
CONTENT = b"Subject: hi\r\n\r\nbody\r\n"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = db.create_engine(f"sqlite:///{tmp_path / 'postroom.db'}")
    with engine.begin() as conn:
        for name in ("alice", "bob", "carol"):
            users.add(conn, f"{name}@{DOMAIN}", "x")
        users.add(conn, f"full@{DOMAIN}", "x", quota=100)
    yield engine
    engine.dispose()


@pytest.fixture
def resolver(engine: sa.Engine) -> Resolver:
    return Resolver(engine, [DOMAIN, "other.test"], hostname="mx.example.test")


@pytest.fixture
def recipients(resolver: Resolver, tmp_path: Path) -> LocalRecipients:
    store = MailStore(tmp_path / "mailboxes", fsync=False)
    found = LocalRecipients(resolver, store)
    store.quota_of = found.quota_of
    return found


def alias(engine: sa.Engine, address: str, *targets: str) -> None:
    with engine.begin() as conn:
        aliases.add(conn, address, targets)


def test_accounts_and_unknown(resolver: Resolver) -> None:
    assert resolver.resolve(f"alice@{DOMAIN}") == Resolution((f"alice@{DOMAIN}",))
    assert resolver.resolve("Alice@Example.TEST") == Resolution((f"alice@{DOMAIN}",))
    assert resolver.resolve(f"nobody@{DOMAIN}") is None
    # Remote addresses resolve to themselves, as forwards.
    assert resolver.resolve("x@remote.test") == Resolution((), ("x@remote.test",))


def test_sub_addressing(engine: sa.Engine, tmp_path: Path) -> None:
    plus = Resolver(engine, [DOMAIN])
    assert plus.resolve(f"alice+news@{DOMAIN}") == Resolution((f"alice@{DOMAIN}",))
    assert plus.resolve(f"alice+a+b@{DOMAIN}") == Resolution((f"alice@{DOMAIN}",))
    assert plus.resolve(f"alice-news@{DOMAIN}") is None
    assert plus.resolve(f"+alice@{DOMAIN}") is None
    both = Resolver(engine, [DOMAIN], delimiters="+-")
    assert both.resolve(f"alice-news@{DOMAIN}") == Resolution((f"alice@{DOMAIN}",))
    off = Resolver(engine, [DOMAIN], delimiters="")
    assert off.resolve(f"alice+news@{DOMAIN}") is None


def test_aliases(engine: sa.Engine, resolver: Resolver) -> None:
    alias(engine, f"sales@{DOMAIN}", f"bob@{DOMAIN}", f"carol@{DOMAIN}")
    alias(
        engine, f"team@{DOMAIN}", f"sales@{DOMAIN}", f"alice@{DOMAIN}", "x@remote.test"
    )
    alias(engine, f"alice@{DOMAIN}", f"alice@{DOMAIN}", "alice@remote.test")
    assert resolver.resolve(f"sales@{DOMAIN}") == Resolution(
        (f"bob@{DOMAIN}", f"carol@{DOMAIN}")
    )
    # Nested, with a self-reference keeping the account's own copy.
    assert resolver.resolve(f"team@{DOMAIN}") == Resolution(
        (f"alice@{DOMAIN}", f"bob@{DOMAIN}", f"carol@{DOMAIN}"),
        ("alice@remote.test", "x@remote.test"),
    )
    # The alias wins over the account; its sub-address too.
    assert resolver.resolve(f"alice+x@{DOMAIN}") == Resolution(
        (f"alice@{DOMAIN}",), ("alice@remote.test",)
    )


def test_alias_loops_end(engine: sa.Engine, resolver: Resolver) -> None:
    alias(engine, f"a@{DOMAIN}", f"b@{DOMAIN}")
    alias(engine, f"b@{DOMAIN}", f"a@{DOMAIN}", f"carol@{DOMAIN}")
    assert resolver.resolve(f"a@{DOMAIN}") == Resolution((f"carol@{DOMAIN}",))
    alias(engine, f"x@{DOMAIN}", f"y@{DOMAIN}")
    alias(engine, f"y@{DOMAIN}", f"x@{DOMAIN}")
    assert resolver.resolve(f"x@{DOMAIN}") is None


def test_catch_all(engine: sa.Engine, resolver: Resolver) -> None:
    alias(engine, f"@{DOMAIN}", f"carol@{DOMAIN}")
    assert resolver.resolve(f"anything@{DOMAIN}") == Resolution((f"carol@{DOMAIN}",))
    # Accounts and aliases still come first; other domains are untouched.
    assert resolver.resolve(f"alice@{DOMAIN}") == Resolution((f"alice@{DOMAIN}",))
    assert resolver.resolve("anything@other.test") is None


def test_postmaster(engine: sa.Engine) -> None:
    plain = Resolver(engine, [DOMAIN, "other.test"], hostname="mx.example.test")
    # No account or alias: the postmaster@<domain> mailbox.
    assert plain.resolve(f"postmaster@{DOMAIN}") == Resolution(
        (f"postmaster@{DOMAIN}",)
    )
    assert plain.resolve("PostMaster@other.test") == Resolution(
        ("postmaster@other.test",)
    )
    # Bare postmaster (RFC 5321 §4.5.1): the first local domain.
    assert plain.resolve("postmaster") == Resolution((f"postmaster@{DOMAIN}",))
    configured = Resolver(engine, [DOMAIN], postmaster=f"alice@{DOMAIN}")
    assert configured.resolve(f"postmaster@{DOMAIN}") == Resolution(
        (f"alice@{DOMAIN}",)
    )
    # An alias beats the setting.
    alias(engine, f"postmaster@{DOMAIN}", f"bob@{DOMAIN}")
    assert configured.resolve(f"postmaster@{DOMAIN}") == Resolution((f"bob@{DOMAIN}",))


def test_rcpt_answers(recipients: LocalRecipients, engine: sa.Engine) -> None:
    assert recipients.check_rcpt(f"alice@{DOMAIN}") is None
    assert recipients.check_rcpt(f"nobody@{DOMAIN}") == UNKNOWN_USER
    assert (UNKNOWN_USER.code, UNKNOWN_USER.enhanced) == (550, "5.1.1")
    assert recipients.check_rcpt(f"postmaster@{DOMAIN}") is None

    # Over quota: 452 4.2.2 at RCPT, and at end of data for a message
    # that would not fit.
    assert recipients.check_rcpt(f"full@{DOMAIN}") is None
    assert recipients.check_message([f"full@{DOMAIN}"], 50) is None
    assert recipients.check_message([f"full@{DOMAIN}"], 101) == MAILBOX_FULL
    # With another recipient that fits, the message is accepted.
    assert recipients.check_message([f"full@{DOMAIN}", f"alice@{DOMAIN}"], 101) is None
    with recipients.store.open(f"full@{DOMAIN}") as box:
        box.append(b"x" * 100)
    assert recipients.check_rcpt(f"full@{DOMAIN}") == MAILBOX_FULL
    assert (MAILBOX_FULL.code, MAILBOX_FULL.enhanced) == (452, "4.2.2")


def test_default_quota(recipients: LocalRecipients, engine: sa.Engine) -> None:
    recipients.default_quota = 10
    assert recipients.quota_of(f"alice@{DOMAIN}") == 10
    assert recipients.quota_of(f"full@{DOMAIN}") == 100
    with engine.begin() as conn:
        users.set_quota(conn, f"alice@{DOMAIN}", 0)
    assert recipients.quota_of(f"alice@{DOMAIN}") is None


def test_append_over_quota_is_refused(recipients: LocalRecipients) -> None:
    from postroom.errors import QuotaExceeded

    with recipients.store.open(f"full@{DOMAIN}") as box:
        box.append(b"x" * 60)
        with pytest.raises(QuotaExceeded):
            box.append(b"x" * 60)
        assert recipients.store.usage(f"full@{DOMAIN}") == 60


def test_expand_at_queue_time(recipients: LocalRecipients, engine: sa.Engine) -> None:
    alias(engine, f"sales@{DOMAIN}", f"bob@{DOMAIN}", "x@remote.test")
    given = [
        Recipient(f"Alice+tag@{DOMAIN}", ("SUCCESS",)),
        Recipient(f"sales@{DOMAIN}", ("FAILURE",)),
        Recipient(f"bob@{DOMAIN}"),
        Recipient("y@remote.test", orcpt="rfc822;z@remote.test"),
        Recipient("postmaster"),
    ]
    assert recipients.expand(given) == [
        # An account (even sub-addressed) stays as given.
        Recipient(f"Alice+tag@{DOMAIN}", ("SUCCESS",)),
        Recipient(f"bob@{DOMAIN}", ("FAILURE",), f"rfc822;sales@{DOMAIN}"),
        Recipient("x@remote.test", ("FAILURE",), f"rfc822;sales@{DOMAIN}"),
        # bob was reached already through the alias.
        Recipient("y@remote.test", orcpt="rfc822;z@remote.test"),
        Recipient(f"postmaster@{DOMAIN}", None, "rfc822;postmaster"),
    ]


# -- local delivery through the resolver -------------------------------------


def deliver(agent: LocalDelivery, rcpt: str) -> tuple[str, str]:
    envelope = Envelope("0TESTQUEUEID", "s@remote.test", [Recipient(rcpt)])
    result = agent.deliver(envelope, envelope.recipients[0], CONTENT)
    return result.status, result.reply.enhanced


def inbox(recipients: LocalRecipients, user: str) -> list[bytes]:
    with recipients.store.open(user) as box:
        return [box.read(m.uid) for m in box.messages()]


def test_local_delivery_uses_the_resolver(
    recipients: LocalRecipients, engine: sa.Engine, tmp_path: Path
) -> None:
    agent = LocalDelivery(
        tmp_path / "mailboxes", "mx.example.test", fsync=False, recipients=recipients
    )
    alias(engine, f"sales@{DOMAIN}", f"bob@{DOMAIN}", f"carol@{DOMAIN}")
    assert deliver(agent, f"Alice+news@{DOMAIN}") == (DELIVERED, "2.0.0")
    assert deliver(agent, f"sales@{DOMAIN}") == (DELIVERED, "2.0.0")
    assert deliver(agent, f"nobody@{DOMAIN}") == (BOUNCED, "5.1.1")
    assert deliver(agent, "../x@example.test") == (BOUNCED, "5.1.3")

    [alice] = inbox(recipients, f"alice@{DOMAIN}")
    assert alice.startswith(
        b"Return-Path: <s@remote.test>\r\nDelivered-To: Alice+news@example.test\r\n"
    )
    assert alice.endswith(CONTENT)
    # Each account of the alias gets its own copy.
    assert len(inbox(recipients, f"bob@{DOMAIN}")) == 1
    assert len(inbox(recipients, f"carol@{DOMAIN}")) == 1


def test_local_delivery_defers_over_quota(
    recipients: LocalRecipients, tmp_path: Path
) -> None:
    with recipients.resolver.engine.begin() as conn:
        users.set_quota(conn, f"full@{DOMAIN}", 200)
    agent = LocalDelivery(
        tmp_path / "mailboxes", "mx.example.test", fsync=False, recipients=recipients
    )
    assert deliver(agent, f"full@{DOMAIN}") == (DELIVERED, "2.0.0")
    assert deliver(agent, f"full@{DOMAIN}") == (DELIVERED, "2.0.0")
    # Each copy is 83 bytes with its trace header: a third passes 200.
    assert deliver(agent, f"full@{DOMAIN}") == (DEFERRED, "4.2.2")
    assert len(inbox(recipients, f"full@{DOMAIN}")) == 2


def test_database_failure_is_temporary(
    recipients: LocalRecipients, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(address: str) -> None:
        raise sa.exc.OperationalError("SELECT", {}, Exception("database is locked"))

    monkeypatch.setattr(recipients.resolver, "resolve", broken)
    assert recipients.check_rcpt(f"alice@{DOMAIN}") == LOOKUP_FAILED
    assert recipients.check_message([f"alice@{DOMAIN}"], 10) == LOOKUP_FAILED
    given = [Recipient(f"alice@{DOMAIN}")]
    assert recipients.expand(given) == given
    agent = LocalDelivery(
        tmp_path / "mailboxes", "mx.example.test", fsync=False, recipients=recipients
    )
    assert deliver(agent, f"alice@{DOMAIN}") == (DEFERRED, "4.3.0")


def test_internationalized_domains_match_in_either_form(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        users.add(conn, "josé@bücher.test", "x")
        aliases.add(conn, "info@xn--bcher-kva.test", ["josé@bücher.test"])
    resolver = Resolver(engine, ["bücher.test"])
    mine = Resolution(("josé@bücher.test",))
    assert resolver.resolve("josé@xn--bcher-kva.test") == mine
    assert resolver.resolve("JOSÉ@bücher.test") == mine
    assert resolver.resolve("info@bücher.test") == mine


def test_unicode_spellings_are_one_account(engine: sa.Engine, tmp_path: Path) -> None:
    # "josé" composed and as "e" + U+0301 name one Maildir (mailbox.names
    # normalizes to NFC); they must be one account too, never two
    # accounts reading each other's mail, and mail to either spelling
    # must find it.
    composed, decomposed = "jos\u00e9@" + DOMAIN, "jose\u0301@" + DOMAIN
    with engine.begin() as conn:
        users.add(conn, decomposed, "x")
    with pytest.raises(UserExists), engine.begin() as conn:
        users.add(conn, composed, "x")

    resolver = Resolver(engine, [DOMAIN])
    assert resolver.resolve(composed) == Resolution((composed,))
    assert resolver.resolve(decomposed) == Resolution((composed,))
    store = MailStore(tmp_path / "mailboxes", fsync=False)
    assert store.maildir(decomposed) == store.maildir(composed)
