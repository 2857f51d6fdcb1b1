"""DKIM verification of every signature, keys published in the test DNS.

Messages are signed by dkimpy with keys made at test time
(``SigningKey``); the verifier finds the public halves only through
the resolver, as it would on the Internet.
"""

from __future__ import annotations

import asyncio

import pytest

from postroom.delivery.routing import Resolver
from postroom.mailauth import dkimverify
from postroom.mailauth.lookups import ThreadDns
from postroom.mailauth.results import DkimResult
from postroom.testing.dns import TestDnsServer
from postroom.testing.mailauth import DNS_TIMEOUT, SigningKey, message


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey("pass.test", "s1")


@pytest.fixture(scope="module")
def other_key() -> SigningKey:
    return SigningKey("list.test", "s2")


@pytest.fixture
def published(dns: TestDnsServer, key: SigningKey, other_key: SigningKey) -> None:
    for k in (key, other_key):
        dns.set(k.dns_name, "TXT", [k.txt])


async def verify(resolver: Resolver, content: bytes) -> tuple[DkimResult, ...]:
    loop = asyncio.get_running_loop()
    dns = ThreadDns(resolver, loop, timeout=DNS_TIMEOUT)
    return await loop.run_in_executor(None, dkimverify.verify, dns, content)


@pytest.mark.usefixtures("published")
async def test_a_good_signature_passes(resolver: Resolver, key: SigningKey) -> None:
    (result,) = await verify(resolver, key.sign(message()))

    assert result.result == "pass"
    assert (result.domain, result.selector) == ("pass.test", "s1")
    assert result.b


@pytest.mark.usefixtures("published")
async def test_a_changed_body_fails(resolver: Resolver, key: SigningKey) -> None:
    signed = key.sign(message())
    tampered = signed.replace(b"see you.", b"send money.")

    (result,) = await verify(resolver, tampered)

    assert result.result == "fail"
    assert "body hash" in result.reason


@pytest.mark.usefixtures("published")
async def test_a_changed_signed_header_fails(
    resolver: Resolver, key: SigningKey
) -> None:
    signed = key.sign(message())
    tampered = signed.replace(b"Subject: hello", b"Subject: urgent")

    (result,) = await verify(resolver, tampered)

    assert result.result == "fail"


async def test_no_signature_means_no_results(resolver: Resolver) -> None:
    assert await verify(resolver, message()) == ()


async def test_no_key_in_dns_is_permerror(resolver: Resolver, key: SigningKey) -> None:
    (result,) = await verify(resolver, key.sign(message()))

    assert result.result == "permerror"
    assert result.reason == "no key for signature"


async def test_a_revoked_key_is_permerror(
    resolver: Resolver, dns: TestDnsServer, key: SigningKey
) -> None:
    dns.set(key.dns_name, "TXT", ["v=DKIM1; k=rsa; p="])

    (result,) = await verify(resolver, key.sign(message()))

    assert result.result == "permerror"


async def test_a_key_lookup_timeout_is_temperror(
    resolver: Resolver, dns: TestDnsServer, key: SigningKey
) -> None:
    dns.timeout(key.dns_name)

    (result,) = await verify(resolver, key.sign(message()))

    assert result.result == "temperror"
    assert result.domain == "pass.test"


@pytest.mark.usefixtures("published")
async def test_a_malformed_signature_is_neutral(resolver: Resolver) -> None:
    broken = b"DKIM-Signature: v=1; a=rsa-sha256; d=pass.test; s=s1\r\n" + message()

    (result,) = await verify(resolver, broken)

    assert result.result == "neutral"
    assert result.domain == "pass.test"


@pytest.mark.usefixtures("published")
async def test_every_signature_is_verified(
    resolver: Resolver, key: SigningKey, other_key: SigningKey
) -> None:
    # A mailing list's signature on top of the author's, then a third
    # that no longer verifies.
    signed = other_key.sign(key.sign(message()))
    broken = (
        b"DKIM-Signature: v=1; a=rsa-sha256; d=gone.test; s=x; h=from;"
        b" bh=AAAA; b=AAAA\r\n"
    )

    results = await verify(resolver, broken + signed)

    assert [(r.domain, r.result) for r in results] == [
        ("gone.test", "permerror"),
        ("list.test", "pass"),
        ("pass.test", "pass"),
    ]


@pytest.mark.usefixtures("published")
async def test_signatures_past_the_limit_are_not_checked(
    resolver: Resolver, key: SigningKey
) -> None:
    signed = message()
    for _ in range(dkimverify.MAX_SIGNATURES + 2):
        signed = key.sign(signed)

    results = await verify(resolver, signed)

    assert len(results) == dkimverify.MAX_SIGNATURES


@pytest.mark.timeout(20)
@pytest.mark.usefixtures("published")
async def test_a_huge_folded_header_is_not_handed_to_dkimpy(
    resolver: Resolver, key: SigningKey
) -> None:
    # dkimpy joins a folded field line by line: 4 MB of continuation
    # lines held a worker thread, and the GIL, for minutes.
    folded = b"X-Long: a\r\n" + b" b\r\n" * 1_000_000
    signed = key.sign(message())

    (result,) = await verify(resolver, folded + signed)
    assert result.result == "policy"
    assert await verify(resolver, folded + message()) == ()
    # Under the limit, verification goes on as before.
    small = b"X-Long: a\r\n" + b" b\r\n" * 1000
    (result,) = await verify(resolver, small + signed)
    assert result.result == "pass"
