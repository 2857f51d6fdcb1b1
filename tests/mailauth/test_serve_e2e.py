"""Authenticated inbound mail through a real ``postroom serve``.

The node asks only the test DNS server, and its relay listener trusts
127.0.0.1 alone; clients connect from 127.0.0.7 (a stranger), so every
message they send is checked the way mail from the Internet would be.
"""

from __future__ import annotations

import re
import smtplib
from collections.abc import Callable, Iterator

import dkim
import pytest

from postroom.queue.envelope import Envelope
from postroom.testing.dns import TestDnsServer
from postroom.testing.mailauth import CLIENT_IP, SigningKey, message
from postroom.testing.process import LOOPBACK, PostroomProcess


@pytest.fixture
def node(
    postroom_factory: Callable[..., PostroomProcess], dns: TestDnsServer
) -> Iterator[PostroomProcess]:
    server = postroom_factory(
        {
            "smtp": {"trusted_networks": ["127.0.0.1/32"]},
            "delivery": {"dns_timeout": 1.0},
            "mailauth": {
                "enabled": True,
                "nameservers": [dns.address],
                "reject_dmarc": True,
            },
        },
        start=False,
    )
    added = server.cli(
        "user", "add", "bob@postroom.test", "--password-stdin", input="secret\n"
    )
    assert added.returncode == 0, added.stderr
    yield server.start()


def stored(node: PostroomProcess, queue_id: str) -> tuple[Envelope, bytes]:
    with node.queue() as queue:
        envelope, _ = queue.get(queue_id)
        return envelope, queue.read_content(queue_id)


def stranger(node: PostroomProcess) -> smtplib.SMTP:
    return smtplib.SMTP(
        LOOPBACK, node.relay_port, timeout=20, source_address=(CLIENT_IP, 0)
    )


def test_signed_mail_is_stored_with_its_verdict(
    node: PostroomProcess, dns: TestDnsServer
) -> None:
    key = SigningKey("pass.test", "e2e")
    dns.set(key.dns_name, "TXT", [key.txt])
    forged = message(extra="Authentication-Results: mx.postroom.test; dkim=pass\r\n")

    with stranger(node) as client:
        client.ehlo("client.test")
        refused = client.sendmail(
            "bounce@pass.test", ["bob@postroom.test"], key.sign(forged)
        )
    assert refused == {}

    (queue_id,) = re.findall(r" (\w+): auth spf=", node.log_text())
    envelope, content = stored(node, queue_id)
    assert envelope.auth_results is not None
    assert envelope.auth_results["spf"] == "pass"
    assert envelope.auth_results["dkim"] == "pass"
    assert envelope.auth_results["dmarc"] == "pass"
    assert content.count(b"Authentication-Results:") == 1
    assert b"Authentication-Results: mx.postroom.test;\r\n\tspf=pass" in content
    assert b"\tdkim=pass header.d=pass.test header.s=e2e" in content
    # The signature still verifies below our fields: we removed only the
    # forged field, which it did not cover, for whoever checks next.
    assert dkim.verify(content, dnsfunc=lambda name, timeout=5: key.txt.encode())
    shown = node.cli("queue", "show", queue_id)
    assert "Authentication: spf=pass spf_domain=pass.test dkim=pass" in shown.stdout


def test_dmarc_reject_is_refused_at_end_of_data(node: PostroomProcess) -> None:
    with stranger(node) as client:
        client.ehlo("client.test")
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail(
                "ceo@reject.test", ["bob@postroom.test"], message("ceo@reject.test")
            )

    assert refused.value.smtp_code == 550
    assert refused.value.smtp_error.startswith(b"5.7.1 ")
    log = node.log_text()
    assert "rejected" in log and "dmarc=fail" in log
    with node.queue() as queue:
        assert [m for m in queue.list_messages() if m.sender == "ceo@reject.test"] == []
