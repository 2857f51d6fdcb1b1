"""The seed story, from the organiser's SMTP submission to each client's
download: a business invites its 18 best clients; Postroom relays the
invitation to their providers, and each client fetches it from its own
provider over POP3 or IMAP.

Here every provider is a Postroom node of its own, as a provider runs
Postfix + Dovecot: gmail.test on 127.0.0.2, outlook.test on 127.0.0.3
and hotmail.test on 127.0.0.4 accept mail for their domain on one
common port and serve their users over POP3 and IMAP. The sending node
finds them through the test's DNS server (MX records in ``.test``
zones); nothing leaves loopback.
"""

from __future__ import annotations

import email
import email.policy
import imaplib
import poplib
from collections.abc import Callable, Iterator

import pytest

from postroom.testing.dns import TestDnsServer
from postroom.testing.process import PostroomProcess
from postroom.testing.stage import (
    CLIENTS,
    INVITATION,
    PROVIDERS,
    common_port,
    send,
    wait_until,
    zones,
)

PASSWORD = "client-password"
DOMAINS = ("gmail.test", "outlook.test", "hotmail.test")


@pytest.fixture
def dns() -> Iterator[TestDnsServer]:
    with TestDnsServer(zones(), zones=["test"]) as server:
        yield server


def delivery(dns: TestDnsServer, port: int) -> dict[str, object]:
    """Delivery settings that resolve through the test's DNS only."""
    return {
        "enabled": True,
        "nameservers": [dns.address],
        "mx_port": port,
        "allowed_networks": ["127.0.0.0/8"],
        "poll_interval": 0.1,
    }


def start_provider(
    make: Callable[..., PostroomProcess], dns: TestDnsServer, domain: str, port: int
) -> PostroomProcess:
    """A Postroom node that is *domain*'s MX and mailbox server (its
    delivery engine stores what arrives into the users' Maildirs)."""
    address = PROVIDERS[domain]
    node = make(
        {
            "smtp": {
                "listeners": [{"kind": "relay", "address": f"{address}:{port}"}],
                "local_domains": [domain],
            },
            "delivery": delivery(dns, port),
        },
        start=False, kinds=("pop3", "imap"), hostname=f"mx.{domain}",
    )
    for client in CLIENTS:
        if client.endswith("@" + domain):
            node.add_user(client, PASSWORD)
    node.start()
    return node


def over_pop3(node: PostroomProcess, client: str) -> list[bytes]:
    """Every message in *client*'s mailbox, read and deleted over POP3."""
    pop = poplib.POP3("127.0.0.1", node.pop3_port, timeout=10)
    try:
        pop.user(client)
        pop.pass_(PASSWORD)
        count, _ = pop.stat()
        messages = []
        for n in range(1, count + 1):
            _, lines, _ = pop.retr(n)
            messages.append(b"\r\n".join(lines) + b"\r\n")
            pop.dele(n)
    finally:
        pop.quit()
    return messages


def over_imap(node: PostroomProcess, client: str) -> list[bytes]:
    """Every message in *client*'s INBOX, fetched over IMAP (and so
    marked \\Seen)."""
    imap = imaplib.IMAP4("127.0.0.1", node.imap_port, timeout=10)
    try:
        imap.login(client, PASSWORD)
        status, data = imap.select("INBOX")
        assert status == "OK", data
        messages = []
        if int(data[0] or 0):
            status, fetched = imap.uid("FETCH", "1:*", "(BODY[])")
            assert status == "OK", fetched
            messages = [part[1] for part in fetched if isinstance(part, tuple)]
        imap.close()
    finally:
        imap.logout()
    return messages


def test_every_client_downloads_the_invitation(
    dns: TestDnsServer, postroom_factory: Callable[..., PostroomProcess]
) -> None:
    port = common_port()
    providers = {d: start_provider(postroom_factory, dns, d, port) for d in DOMAINS}
    sender = postroom_factory({"delivery": delivery(dns, port)})
    queue_id = send(sender, CLIENTS, INVITATION)
    wait_until(lambda: len(sender.log_events("delivered")) == len(CLIENTS), 30)
    delivered = sender.log_events("delivered")
    assert all(line.startswith(f"{queue_id}: delivered") for line in delivered)
    # Each provider stores its six copies in its users' mailboxes.
    for node in providers.values():
        wait_until(lambda n=node: len(n.log_events("delivered")) == 6, 30)

    # Half the clients read with POP3 (and delete), half with IMAP.
    for n, client in enumerate(CLIENTS):
        node = providers[client.split("@")[1]]
        fetch = over_pop3 if n % 2 == 0 else over_imap
        [message] = fetch(node, client)
        # Byte for byte as sent, below the headers the hops added.
        assert message.endswith(INVITATION), client
        parsed = email.message_from_bytes(message, policy=email.policy.default)
        assert parsed["Delivered-To"] == client
        assert parsed["Return-Path"] == "<events@sender.test>"
        # Two Received fields: the sender node's and the provider's.
        assert len(parsed.get_all("Received")) == 2

    # Read over POP3 and deleted: gone. Read over IMAP: still there.
    for n, client in enumerate(CLIENTS):
        node = providers[client.split("@")[1]]
        left = over_pop3(node, client) if n % 2 == 0 else over_imap(node, client)
        assert len(left) == (0 if n % 2 == 0 else 1), client
