"""SPF through pyspf, with every query answered by the test DNS server.

Each case is a sender domain of ``postroom.testing.mailauth.RECORDS``
and the result RFC 7208 gives for mail from ``CLIENT_IP``.
"""

from __future__ import annotations

import asyncio

import pytest

from postroom.delivery.routing import Resolver
from postroom.mailauth import spf
from postroom.mailauth.lookups import ThreadDns
from postroom.mailauth.results import SpfResult
from postroom.testing.dns import TestDnsServer
from postroom.testing.mailauth import CLIENT_IP, DNS_TIMEOUT


async def check(
    resolver: Resolver, sender: str, helo: str = "client.test", ip: str = CLIENT_IP
) -> SpfResult:
    loop = asyncio.get_running_loop()
    dns = ThreadDns(resolver, loop, timeout=DNS_TIMEOUT)
    return await loop.run_in_executor(
        None,
        lambda: spf.check(
            dns, client_ip=ip, sender=sender, helo=helo, receiver="mx.postroom.test"
        ),
    )


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("pass.test", "pass"),
        ("fail.test", "fail"),
        ("softfail.test", "softfail"),
        ("neutral.test", "neutral"),
        ("none.test", "none"),
        ("nxdomain.test", "none"),
        ("include.test", "pass"),
        ("redirect.test", "pass"),
        ("permerror.test", "permerror"),
        ("loop.test", "permerror"),
        ("amech.test", "pass"),
        ("mxmech.test", "pass"),
    ],
)
async def test_mail_from_results(
    resolver: Resolver, domain: str, expected: str
) -> None:
    result = await check(resolver, f"someone@{domain}")

    assert result.result == expected
    assert (result.identity, result.domain) == ("mailfrom", domain)


async def test_a_listed_address_passes_and_another_fails(resolver: Resolver) -> None:
    assert (await check(resolver, "a@pass.test", ip=CLIENT_IP)).result == "pass"
    assert (await check(resolver, "a@pass.test", ip="192.0.2.1")).result == "fail"


async def test_null_sender_is_checked_by_helo(resolver: Resolver) -> None:
    result = await check(resolver, "", helo="helo.test")

    assert (result.result, result.identity, result.domain) == (
        "pass",
        "helo",
        "helo.test",
    )


async def test_dns_timeout_is_temperror(resolver: Resolver, dns: TestDnsServer) -> None:
    result = await check(resolver, "a@slow.test")

    assert result.result == "temperror"
    assert dns.queries("slow.test", "TXT") >= 1


async def test_servfail_is_temperror(resolver: Resolver, dns: TestDnsServer) -> None:
    dns.servfail("pass.test")

    assert (await check(resolver, "a@pass.test")).result == "temperror"


async def test_a_fail_explanation_is_ours_not_the_senders(
    resolver: Resolver, dns: TestDnsServer
) -> None:
    # exp= lets the sender's domain write the explanation (RFC 7208
    # §6.2); it must not reach our header.
    dns.set("fail.test", "TXT", ["v=spf1 -all exp=exp.fail.test"])
    dns.set("exp.fail.test", "TXT", ["go away) dkim=pass (evil"])

    result = await check(resolver, "a@fail.test")

    assert result.result == "fail"
    assert "evil" not in result.reason


async def test_no_resolver_means_temperror_never_the_system_dns() -> None:
    # Outside ``check`` pyspf has no DNS of ours: its hook refuses
    # rather than fall back to the system resolver.
    import spf as pyspf

    result = pyspf.query(CLIENT_IP, "a@pass.test", "client.test").check()

    assert result[0] == "temperror"
