"""DMARC: record parsing, alignment, policy discovery and evaluation."""

from __future__ import annotations

import pytest

from postroom.delivery.routing import Resolver
from postroom.mailauth import dmarc
from postroom.mailauth.dmarc import Discovery, Policy
from postroom.mailauth.results import DkimResult, DmarcResult, SpfResult
from postroom.testing.dns import TestDnsServer

SPF_NONE = SpfResult("none", "mailfrom", "")


def spf_pass(domain: str) -> SpfResult:
    return SpfResult("pass", "mailfrom", domain)


def dkim_pass(domain: str) -> tuple[DkimResult, ...]:
    return (DkimResult("pass", domain, "s"),)


# -- the organizational domain (Public Suffix List) ---------------------------


@pytest.mark.parametrize(
    ("domain", "org"),
    [
        ("example.com", "example.com"),
        ("a.b.example.com", "example.com"),
        ("mail.example.co.uk", "example.co.uk"),
        ("co.uk", "co.uk"),
        ("news.postroom.test", "postroom.test"),
        ("EXAMPLE.COM.", "example.com"),
    ],
)
def test_organizational_domain(domain: str, org: str) -> None:
    assert dmarc.organizational_domain(domain) == org


@pytest.mark.parametrize(
    ("domain", "author", "mode", "expected"),
    [
        ("example.com", "example.com", "s", True),
        ("mail.example.com", "example.com", "r", True),
        ("mail.example.com", "example.com", "s", False),
        ("a.example.com", "b.example.com", "r", True),
        ("example.org", "example.com", "r", False),
        # Two registrants under one public suffix are strangers.
        ("other.co.uk", "example.co.uk", "r", False),
        ("co.uk", "example.co.uk", "r", False),
        ("", "example.com", "r", False),
    ],
)
def test_alignment(domain: str, author: str, mode: str, expected: bool) -> None:
    assert dmarc.aligned(domain, author, mode) is expected


# -- records -----------------------------------------------------------------


def test_a_full_record() -> None:
    policy = dmarc.parse_record(
        "v=DMARC1; p=Reject; sp=none; adkim=s; aspf=s; pct=20; rua=mailto:x@y",
        "example.com",
    )

    assert policy == Policy("example.com", "reject", "none", "s", "s", 20)


def test_defaults_and_bad_optional_values() -> None:
    policy = dmarc.parse_record("v=DMARC1;p=quarantine;adkim=x;pct=200", "e.com")

    assert policy == Policy("e.com", "quarantine", "quarantine", "r", "r", 100)


@pytest.mark.parametrize(
    "text", ["v=spf1 -all", "v=DMARC1", "v=DMARC1; p=block", "p=reject; v=DMARC1"]
)
def test_records_that_do_not_count(text: str) -> None:
    assert dmarc.parse_record(text, "example.com") is None


def test_a_bad_p_with_rua_counts_as_none() -> None:
    policy = dmarc.parse_record("v=DMARC1; p=block; rua=mailto:a@b", "e.com")

    assert policy is not None
    assert (policy.p, policy.sp) == ("none", "none")


# -- evaluation ----------------------------------------------------------------


REJECT = Discovery(Policy("example.com", "reject", "quarantine"))


def test_aligned_spf_passes() -> None:
    result = dmarc.evaluate(REJECT, "example.com", spf_pass("bounce.example.com"), ())

    assert (result.result, result.policy, result.disposition) == (
        "pass",
        "reject",
        "none",
    )


def test_aligned_dkim_passes_despite_spf_fail() -> None:
    spf = SpfResult("fail", "mailfrom", "example.com")

    result = dmarc.evaluate(REJECT, "example.com", spf, dkim_pass("example.com"))

    assert result.result == "pass"


def test_unaligned_passes_fail_with_the_policy() -> None:
    result = dmarc.evaluate(
        REJECT, "example.com", spf_pass("esp.test"), dkim_pass("esp.test")
    )

    assert (result.result, result.policy, result.disposition) == (
        "fail",
        "reject",
        "reject",
    )


def test_strict_alignment_needs_the_exact_domain() -> None:
    strict = Discovery(Policy("example.com", "reject", "reject", "s", "s"))

    result = dmarc.evaluate(strict, "example.com", spf_pass("bounce.example.com"), ())

    assert result.result == "fail"


def test_a_subdomain_gets_the_sp_policy() -> None:
    result = dmarc.evaluate(REJECT, "news.example.com", SPF_NONE, ())

    assert (result.result, result.policy) == ("fail", "quarantine")


@pytest.mark.parametrize(
    ("draw", "disposition"), [(0.10, "reject"), (0.49, "reject"), (0.50, "quarantine")]
)
def test_pct_samples_the_policy(draw: float, disposition: str) -> None:
    half = Discovery(Policy("example.com", "reject", "reject", pct=50))

    result = dmarc.evaluate(half, "example.com", SPF_NONE, (), sample=lambda: draw)

    assert (result.policy, result.disposition) == ("reject", disposition)


def test_a_temporary_spf_error_is_not_a_failure() -> None:
    spf = SpfResult("temperror", "mailfrom", "example.com")

    result = dmarc.evaluate(REJECT, "example.com", spf, ())

    assert result.result == "temperror"


@pytest.mark.parametrize(
    ("spf", "dkim", "word"),
    [
        # Aligned (relaxed): the pass might have come; undecided.
        (SpfResult("temperror", "mailfrom", "bounce.example.com"), (), "temperror"),
        ((SPF_NONE), (DkimResult("temperror", "mail.example.com"),), "temperror"),
        # Another domain's trouble cannot make example.com's fail a
        # temperror (which reject_dmarc never refuses).
        (SpfResult("temperror", "mailfrom", "other.test"), (), "fail"),
        ((SPF_NONE), (DkimResult("temperror", "other.test"),), "fail"),
    ],
)
def test_only_an_aligned_temporary_error_leaves_dmarc_open(
    spf: SpfResult, dkim: tuple[DkimResult, ...], word: str
) -> None:
    result = dmarc.evaluate(REJECT, "example.com", spf, dkim)

    assert result.result == word


async def test_an_author_domain_that_is_no_dns_name_has_no_policy(
    resolver: Resolver, dns: TestDnsServer
) -> None:
    for domain in ("a..b.test", "x" * 64 + ".test"):
        found = await dmarc.discover(resolver, domain)
        assert (found.policy, found.temporary) == (None, False)


def test_no_policy_is_none() -> None:
    result = dmarc.evaluate(Discovery(None, reason="no record"), "e.com", SPF_NONE, ())

    assert result.result == "none"


# -- discovery through the DNS ---------------------------------------------------


async def test_discovery_at_the_author_domain(resolver: Resolver) -> None:
    found = await dmarc.discover(resolver, "reject.test")

    assert found.policy is not None
    assert (found.policy.at, found.policy.p) == ("reject.test", "reject")


async def test_discovery_falls_back_to_the_organizational_domain(
    resolver: Resolver, dns: TestDnsServer
) -> None:
    found = await dmarc.discover(resolver, "mail.news.example.co.uk")

    assert found.policy is not None
    assert found.policy.at == "example.co.uk"
    assert dns.queries("_dmarc.mail.news.example.co.uk", "TXT") == 1
    # Never the public suffix itself.
    assert dns.queries("_dmarc.co.uk", "TXT") == 0


async def test_several_records_are_no_policy(
    resolver: Resolver, dns: TestDnsServer
) -> None:
    dns.set("_dmarc.two.test", "TXT", ["v=DMARC1; p=none", "v=DMARC1; p=reject"])

    found = await dmarc.discover(resolver, "two.test")

    assert found.policy is None
    assert not found.temporary


async def test_a_lookup_timeout_is_temporary(resolver: Resolver) -> None:
    found = await dmarc.discover(resolver, "dmarcslow.test")

    assert found.temporary


# -- several author domains (§6.6.1) ------------------------------------------


def _result(word: str, domain: str, disposition: str = "") -> DmarcResult:
    return DmarcResult(word, domain, policy=disposition, disposition=disposition)


@pytest.mark.parametrize(
    ("found", "chosen"),
    [
        # The strictest failure wins, wherever it stands.
        ((("pass", "a"), ("fail", "b", "none"), ("fail", "c", "reject")), "c"),
        ((("fail", "a", "quarantine"), ("fail", "b", "none")), "a"),
        # No failure: an undecided or unprotected author is no pass.
        ((("pass", "a"), ("temperror", "b"), ("none", "c")), "b"),
        ((("pass", "a"), ("none", "b")), "b"),
        ((("pass", "a"), ("pass", "b")), "a"),
    ],
)
def test_strictest_of_several_authors(
    found: tuple[tuple[str, ...], ...], chosen: str
) -> None:
    results = [_result(*f) for f in found]
    assert dmarc.strictest(results).from_domain == chosen
