"""InboundAuth.check: the three checks together, the header, refusals."""

from __future__ import annotations

import re
from typing import Any

import pytest

from postroom import config as config_module
from postroom.mailauth import dmarc
from postroom.mailauth.inbound import InboundAuth, Outcome
from postroom.testing.dns import TestDnsServer
from postroom.testing.mailauth import CLIENT_IP, DNS_TIMEOUT, SigningKey, message

HOSTNAME = "mx.postroom.test"


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey("pass.test", "s1")


def checker(dns: TestDnsServer, **settings: Any) -> InboundAuth:
    config = config_module.Config(hostname=HOSTNAME)
    config.mailauth.nameservers = [dns.address]
    config.delivery.dns_timeout = DNS_TIMEOUT
    for name, value in settings.items():
        setattr(config.mailauth, name, value)
    return InboundAuth(config, sample=lambda: 0.0)


async def check(
    auth: InboundAuth, content: bytes, sender: str = "bounce@pass.test"
) -> Outcome:
    try:
        return await auth.check(
            content, client_ip=CLIENT_IP, sender=sender, helo="client.test"
        )
    finally:
        auth.close()


def header_text(outcome: Outcome) -> str:
    return outcome.header.decode("ascii")


async def test_all_pass_header(dns: TestDnsServer, key: SigningKey) -> None:
    dns.set(key.dns_name, "TXT", [key.txt])

    outcome = await check(checker(dns), key.sign(message()))

    assert outcome.refusal is None
    text = re.sub(r"header\.b=[^;\s]+", "header.b=B", header_text(outcome))
    assert text == (
        "Authentication-Results: mx.postroom.test;\r\n"
        f"\tspf=pass ({CLIENT_IP} is allowed by pass.test)"
        " smtp.mailfrom=pass.test;\r\n"
        "\tdkim=pass header.d=pass.test header.s=s1 header.b=B;\r\n"
        "\tdmarc=pass (p=none dis=none aligned spf) header.from=pass.test\r\n"
    )
    assert outcome.verdict.summary() == {
        "spf": "pass",
        "spf_domain": "pass.test",
        "dkim": "pass",
        "dkim_domains": "pass.test:pass",
        "dmarc": "pass",
        "from_domain": "pass.test",
        "policy": "none",
        "disposition": "none",
    }


async def test_nothing_to_go_on(dns: TestDnsServer) -> None:
    outcome = await check(
        checker(dns), message("a@nowhere.test"), sender="a@nowhere.test"
    )

    assert header_text(outcome) == (
        "Authentication-Results: mx.postroom.test;\r\n"
        "\tspf=none (no SPF record for nowhere.test) smtp.mailfrom=nowhere.test;\r\n"
        "\tdkim=none;\r\n"
        "\tdmarc=none (no DMARC record) header.from=nowhere.test\r\n"
    )


async def test_dmarc_reject_is_recorded_by_default(dns: TestDnsServer) -> None:
    outcome = await check(
        checker(dns), message("ceo@reject.test"), sender="ceo@reject.test"
    )

    assert outcome.refusal is None
    assert "spf=fail" in header_text(outcome)
    assert "dmarc=fail (p=reject dis=reject" in header_text(outcome)


async def test_dmarc_reject_refused_when_configured(dns: TestDnsServer) -> None:
    outcome = await check(
        checker(dns, reject_dmarc=True),
        message("ceo@reject.test"),
        sender="ceo@reject.test",
    )

    assert outcome.refusal is not None
    assert (outcome.refusal.code, outcome.refusal.enhanced) == (550, "5.7.1")
    assert "reject.test" in outcome.refusal.text


async def test_quarantine_is_not_refused(dns: TestDnsServer) -> None:
    outcome = await check(
        checker(dns, reject_dmarc=True),
        message("ceo@quarantine.test"),
        sender="ceo@quarantine.test",
    )

    assert outcome.refusal is None
    assert "dis=quarantine" in header_text(outcome)


async def test_a_subdomain_gets_sp(dns: TestDnsServer) -> None:
    outcome = await check(
        checker(dns, reject_dmarc=True),
        message("ceo@news.reject.test"),
        sender="ceo@news.reject.test",
    )

    assert outcome.refusal is None
    assert "dmarc=fail (p=quarantine dis=quarantine" in header_text(outcome)


async def test_an_aligned_dkim_pass_saves_a_forwarded_message(
    dns: TestDnsServer,
) -> None:
    # Forwarded: SPF fails for the author's domain, the signature holds.
    key = SigningKey("reject.test", "fw")
    dns.set(key.dns_name, "TXT", [key.txt])

    outcome = await check(
        checker(dns, reject_dmarc=True),
        key.sign(message("ceo@reject.test")),
        sender="ceo@reject.test",
    )

    assert outcome.refusal is None
    assert outcome.verdict.dmarc.result == "pass"


async def test_spf_fail_refused_when_configured(dns: TestDnsServer) -> None:
    outcome = await check(
        checker(dns, reject_spf_fail=True),
        message("a@fail.test"),
        sender="a@fail.test",
    )

    assert outcome.refusal is not None
    assert (outcome.refusal.code, outcome.refusal.enhanced) == (550, "5.7.23")


async def test_a_dns_timeout_is_temperror_and_accepted(dns: TestDnsServer) -> None:
    outcome = await check(
        checker(dns, reject_dmarc=True, reject_spf_fail=True),
        message("a@dmarcslow.test"),
        sender="a@slow.test",
    )

    assert outcome.refusal is None
    assert "spf=temperror" in header_text(outcome)
    assert "dmarc=temperror" in header_text(outcome)


async def test_a_dns_timeout_deferred_when_configured(dns: TestDnsServer) -> None:
    outcome = await check(
        checker(dns, defer_temperror=True),
        message("a@dmarcslow.test"),
        sender="a@dmarcslow.test",
    )

    assert outcome.refusal is not None
    assert (outcome.refusal.code, outcome.refusal.enhanced) == (451, "4.7.1")


async def test_forged_results_under_our_name_are_removed(
    dns: TestDnsServer,
) -> None:
    forged = message(
        "ceo@reject.test",
        extra="Authentication-Results: mx.postroom.test; dmarc=pass\r\n"
        "Authentication-Results: mx.elsewhere.test; spf=pass\r\n",
    )

    outcome = await check(checker(dns), forged, sender="ceo@reject.test")

    assert outcome.removed == 1
    assert b"mx.postroom.test; dmarc=pass" not in outcome.content
    assert b"mx.elsewhere.test; spf=pass" in outcome.content
    assert b"dmarc=fail" in outcome.header


async def test_two_author_domains_take_the_strictest_failure(
    dns: TestDnsServer,
) -> None:
    # RFC 7489 §6.6.1: check each author domain, apply the strictest
    # failing policy. As a permerror, a second author of the sender's
    # own (pass.test passes) lifted reject.test's p=reject, even with
    # reject_dmarc on: a DMARC bypass.
    one_field = b"From: a@pass.test, ceo@reject.test\r\n\r\nhi\r\n"
    two_fields = b"From: ceo@reject.test\r\nFrom: a@pass.test\r\n\r\nhi\r\n"

    for content in (one_field, two_fields):
        outcome = await check(checker(dns), content)
        dmarc = outcome.verdict.dmarc
        assert (dmarc.result, dmarc.from_domain) == ("fail", "reject.test")
        assert dmarc.disposition == "reject"

        refused = await check(checker(dns, reject_dmarc=True), content)
        assert refused.refusal is not None
        assert refused.refusal.code == 550


async def test_two_passing_author_domains_pass(dns: TestDnsServer) -> None:
    # SPF passes for pass.test, which aligns (relaxed) with both.
    content = b"From: a@pass.test, b@news.pass.test\r\n\r\nhi\r\n"

    outcome = await check(checker(dns), content)

    dmarc = outcome.verdict.dmarc
    assert (dmarc.result, dmarc.from_domain) == ("pass", "pass.test")


async def test_too_many_author_domains_are_a_permerror(dns: TestDnsServer) -> None:
    authors = ", ".join(f"a@d{n}.test" for n in range(dmarc.MAX_AUTHORS + 1))
    content = f"From: {authors}\r\n\r\nhi\r\n".encode()

    outcome = await check(checker(dns), content)

    assert outcome.verdict.dmarc.result == "permerror"


async def test_a_null_sender_is_checked_by_helo(dns: TestDnsServer) -> None:
    config = checker(dns)
    try:
        outcome = await config.check(
            message("mailer-daemon@helo.test"),
            client_ip=CLIENT_IP,
            sender="",
            helo="helo.test",
        )
    finally:
        config.close()

    assert "spf=pass" in header_text(outcome)
    assert "smtp.helo=helo.test" in header_text(outcome)


async def test_an_ipv4_mapped_client_address_matches_ip4(dns: TestDnsServer) -> None:
    auth = checker(dns)
    try:
        outcome = await auth.check(
            message(), client_ip=f"::ffff:{CLIENT_IP}", sender="a@pass.test", helo="x"
        )
    finally:
        auth.close()

    assert outcome.verdict.spf.result == "pass"


async def test_dmarc_fail_under_p_none_is_only_recorded(dns: TestDnsServer) -> None:
    # From pass.test (p=none), sent through a host its SPF does not
    # list and with a MAIL FROM of another domain: unaligned, fail.
    outcome = await check(
        checker(dns, reject_dmarc=True), message("a@pass.test"), sender="b@fail.test"
    )

    assert outcome.refusal is None
    assert "spf=fail" in header_text(outcome)
    assert "dmarc=fail (p=none dis=none" in header_text(outcome)


def _bogus_signature(domain: str, selector: str) -> bytes:
    # Well-formed enough for dkimpy's field checks; it never verifies.
    return (
        f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d={domain};"
        f" s={selector}; h=from; bh=YWJj; b=YWJj\r\n"
    ).encode()


@pytest.mark.parametrize(
    ("domain", "selector"),
    [
        # A signature of the forger's own domain whose key lookup
        # times out: it could never have aligned with reject.test.
        ("slow.test", "s1"),
        # One claiming reject.test, with a selector no DNS name can
        # hold: not a DNS failure, there is simply no key.
        ("reject.test", "a..b"),
    ],
)
async def test_a_temperror_that_could_not_align_does_not_lift_a_reject(
    dns: TestDnsServer, domain: str, selector: str
) -> None:
    # RFC 7489 §6.6.2: temperror only when a check that failed for now
    # might have passed *aligned*; otherwise any stranger lifts p=reject
    # by adding one signature whose key lookup fails.
    dns.timeout(f"s1._domainkey.{domain}", "TXT")
    content = _bogus_signature(domain, selector) + message("ceo@reject.test")

    outcome = await check(
        checker(dns, reject_dmarc=True), content, sender="ceo@reject.test"
    )

    assert outcome.verdict.dmarc.result == "fail"
    assert outcome.refusal is not None
    assert outcome.refusal.code == 550
