"""DMARC (RFC 7489): does an authenticated domain align with From?

Theory of operation
-------------------
1. The author domain is the domain of the RFC 5322.From address
   (``headers.from_domains``). No From domain: dmarc=none. Several
   different ones (two From fields, or one with two addresses): each
   is checked as an author domain and the strictest failure counts
   (§6.6.1, ``strictest``), so adding a second author of one's own
   cannot lift a p=reject. More than ``MAX_AUTHORS``: permerror.
2. Policy discovery (§6.6.3, ``discover``): the TXT records at
   ``_dmarc.<author domain>`` that start with ``v=DMARC1``; if there is
   none, those at ``_dmarc.<organizational domain>``. Exactly one record
   must remain, else there is no policy (dmarc=none). A failed lookup is
   dmarc=temperror. Discovery is asynchronous and runs on the event
   loop, beside the SPF and DKIM checks in their threads.
3. Identifier alignment (§3.1): an SPF pass aligns when its domain
   (MAIL FROM's, or HELO's for the null sender) matches the author
   domain; a DKIM pass when its d= does. Strict (``aspf=s``,
   ``adkim=s``) means equal names; relaxed, the default, means equal
   organizational domains.
4. The result (§6.6.2): pass if either aligns. Otherwise fail, or
   temperror when an SPF or DKIM check of an *aligned* domain had a
   temporary error (it might have passed): a DNS hiccup must never
   look like a forgery, nor a forger's own slow DNS like a hiccup.
5. The policy of a failure (§6.3, §6.6.4): ``sp=`` when the record
   came from the organizational domain and the author domain is below
   it, else ``p=``. With ``pct=`` under 100, a message outside the
   sample gets the next milder policy (reject to quarantine,
   quarantine to none).

The organizational domain (§3.2) is the registrable domain under the
Public Suffix List, from the ``publicsuffixlist`` package (maintained,
with the list bundled, no download at run time). A name that is itself
a public suffix is its own organizational domain. Names are compared as
lower-case A-labels.

Record parsing (§6.3, §6.4): tags are case-insensitive, unknown tags
are ignored, invalid values of optional tags fall back to their
defaults. A record without a valid ``p=`` (or with an invalid
``sp=``) counts as ``p=none`` when it has a ``rua=`` tag and as no
record otherwise (§6.6.3 step 6).

Report sending (rua/ruf) is not done. XXX: aggregate and failure
reports need a reporting pipeline of their own (#5 territory).
"""

from __future__ import annotations

import dataclasses
import functools
import random
import re
from collections.abc import Callable

from publicsuffixlist import PublicSuffixList

from postroom.delivery import routing
from postroom.mailauth import lookups
from postroom.mailauth.results import DkimResult, DmarcResult, SpfResult

POLICIES = ("none", "quarantine", "reject")
# Author domains checked per message; each costs up to two lookups.
# XXX: a message with more is permerror, never refused, because a cap
# is needed against DNS amplification and such a From is rare enough
# that no one has asked what it deserves.
MAX_AUTHORS = 8
_MILDER = {"reject": "quarantine", "quarantine": "none", "none": "none"}
_VERSION = re.compile(r"^\s*v\s*=\s*DMARC1\s*(;|$)")


@dataclasses.dataclass(frozen=True, slots=True)
class Policy:
    """A published DMARC record, parsed; *at* is the domain it was
    found at (the author domain or its organizational domain)."""

    at: str
    p: str
    sp: str
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100


@dataclasses.dataclass(frozen=True, slots=True)
class Discovery:
    """What policy discovery found: a Policy, or none with the reason,
    or a temporary failure."""

    policy: Policy | None
    temporary: bool = False
    reason: str = ""


@functools.cache
def _psl() -> PublicSuffixList:
    # Building the list's tables takes a moment; once per process.
    return PublicSuffixList()


def load_public_suffix_list() -> None:
    """Build the list now (at start-up) rather than at the first message."""
    _psl()


def organizational_domain(domain: str) -> str:
    """The registrable domain of *domain* (RFC 7489 §3.2); the domain
    itself when it is a public suffix or has too few labels."""
    name = domain.lower().rstrip(".")
    return _psl().privatesuffix(name) or name


def parse_record(text: str, at: str) -> Policy | None:
    """A Policy from the TXT record *text* found at *at*, or None when
    the record does not count (not DMARC1, or no usable p=)."""
    if not _VERSION.match(text):
        return None
    tags: dict[str, str] = {}
    for part in text.split(";")[1:]:
        tag, sep, value = part.partition("=")
        if sep and tag.strip():
            # §6.4: the first occurrence of a tag counts.
            tags.setdefault(tag.strip().lower(), value.strip())
    p = tags.get("p", "").lower()
    sp = tags.get("sp", p).lower()
    if p not in POLICIES or sp not in POLICIES:
        if not tags.get("rua"):
            return None
        p = sp = "none"
    adkim = tags.get("adkim", "r").lower()
    aspf = tags.get("aspf", "r").lower()
    try:
        pct = int(tags.get("pct", "100"))
    except ValueError:
        pct = 100
    return Policy(
        at=at,
        p=p,
        sp=sp,
        adkim=adkim if adkim in ("r", "s") else "r",
        aspf=aspf if aspf in ("r", "s") else "r",
        pct=pct if 0 <= pct <= 100 else 100,
    )


async def discover(resolver: routing.Resolver, domain: str) -> Discovery:
    """Policy discovery (§6.6.3) for the author domain *domain*."""
    names = [domain]
    org = organizational_domain(domain)
    if org != domain:
        names.append(org)
    for at in names:
        if not lookups.is_dns_name(f"_dmarc.{at}"):
            # An author domain no DNS can hold ("a..b", a 64-octet
            # label) has no policy; asking would be a "temporary" error.
            return Discovery(None, reason=f"not a domain name: {at}")
        found = await resolver.lookup(f"_dmarc.{at}", "TXT")
        if found.status == routing.FAILED:
            return Discovery(
                None, temporary=True, reason=f"_dmarc.{at}: {found.detail}"
            )
        texts = [
            b"".join(getattr(r, "strings", ())).decode("utf-8", "replace")
            for r in found.records
        ]
        candidates = [t for t in texts if _VERSION.match(t)]
        if len(candidates) > 1:
            # §6.6.3 step 5: several records is as good as none.
            return Discovery(None, reason=f"several DMARC records at _dmarc.{at}")
        if candidates:
            policy = parse_record(candidates[0], at)
            if policy is None:
                return Discovery(None, reason=f"unusable DMARC record at _dmarc.{at}")
            return Discovery(policy)
    return Discovery(None, reason="no DMARC record")


def evaluate(
    discovery: Discovery,
    from_domain: str,
    spf: SpfResult,
    dkim: tuple[DkimResult, ...],
    *,
    sample: Callable[[], float] = random.random,
) -> DmarcResult:
    """The DMARC result for a message whose author domain is
    *from_domain*, given its SPF and DKIM results. *sample* draws the
    pct= lottery (a number in [0, 1)); tests pass a fixed one."""
    if discovery.temporary:
        return DmarcResult("temperror", from_domain, reason=discovery.reason)
    policy = discovery.policy
    if policy is None:
        return DmarcResult("none", from_domain, reason=discovery.reason)

    # §6.3: sp= governs a subdomain whose policy came from its
    # organizational domain.
    applied = (
        policy.sp
        if policy.at != from_domain and from_domain.endswith("." + policy.at)
        else policy.p
    )
    if spf.result == "pass" and aligned(spf.domain, from_domain, policy.aspf):
        return _passed(applied, from_domain, "spf")
    for signature in dkim:
        if signature.result == "pass" and aligned(
            signature.domain, from_domain, policy.adkim
        ):
            return _passed(applied, from_domain, "dkim")

    # §6.6.2: no aligned pass. If a check that failed temporarily could
    # have passed aligned, we do not know yet. Only an aligned one: a
    # signature of some other domain whose key lookup fails (the
    # sender's own slow DNS) must not turn a forgery's fail into a
    # temperror that no reject_dmarc refuses.
    might = (
        spf.result == "temperror" and aligned(spf.domain, from_domain, policy.aspf)
    ) or any(
        d.result == "temperror" and aligned(d.domain, from_domain, policy.adkim)
        for d in dkim
    )
    if might:
        return DmarcResult(
            "temperror",
            from_domain,
            policy=applied,
            disposition="none",
            reason="SPF or DKIM lookup failed",
        )
    disposition = applied
    if policy.pct < 100 and sample() * 100 >= policy.pct:
        # §6.6.4: outside the sample, the next milder policy.
        disposition = _MILDER[applied]
    return DmarcResult(
        "fail",
        from_domain,
        policy=applied,
        disposition=disposition,
        reason="no aligned SPF or DKIM pass",
    )


def strictest(found: list[DmarcResult]) -> DmarcResult:
    """One result for a message with several author domains (§6.6.1:
    "apply the most strict policy selected among the checks that
    fail"): the failure with the strictest disposition, else a
    temperror, else anything short of a pass, else the first pass.
    *found* is not empty."""
    failures = [r for r in found if r.result == "fail"]
    if failures:
        return max(
            failures,
            key=lambda r: (_rank(r.disposition), _rank(r.policy)),
        )
    for word in ("temperror", "permerror", "none"):
        for result in found:
            if result.result == word:
                return result
    return found[0]


def _rank(policy: str) -> int:
    return POLICIES.index(policy) if policy in POLICIES else -1


def aligned(domain: str, from_domain: str, mode: str) -> bool:
    """Identifier alignment (§3.1.1, §3.1.2) of *domain* with the author
    domain: equal names in strict mode *mode* "s", equal organizational
    domains in relaxed mode "r"."""
    a = domain.lower().rstrip(".")
    b = from_domain.lower().rstrip(".")
    if not a or not b:
        return False
    if a == b:
        return True
    return mode == "r" and organizational_domain(a) == organizational_domain(b)


def _passed(applied: str, from_domain: str, how: str) -> DmarcResult:
    return DmarcResult(
        "pass",
        from_domain,
        policy=applied,
        disposition="none",
        reason=f"aligned {how}",
    )
