"""Authenticated inbound mail: SPF, DKIM and DMARC at the MX listener.

Theory of operation
-------------------
The SMTP session asks ``applies`` at the end of DATA; when it says yes,
the message waits for ``check`` before it is stored (the session holds
its answer, as it does for the spool). ``check``:

1. starts SPF (``spf.check``) and DKIM (``dkimverify.verify``) in two
   worker threads of our own pool, and DMARC policy discovery
   (``dmarc.discover``) on the event loop, all at once;
2. every DNS query of the three goes through one asynchronous resolver
   (``delivery.routing.Resolver``) pointed at ``mailauth.nameservers``,
   or at ``delivery.nameservers`` when that is empty: the threads hand
   their queries to the loop (``lookups.ThreadDns``);
3. evaluates DMARC from the three (``dmarc.evaluate``, once per
   author domain; with several, ``dmarc.strictest``);
4. decides: refuse (only what the configuration asks for, below), or
   accept with an Authentication-Results field (RFC 8601) to prepend
   and the message's own fields claiming our authserv-id removed
   (RFC 8601 §5, ``headers.remove_claims``).

What is checked
---------------
Only mail arriving on a ``relay`` listener from a client that is
neither in ``smtp.trusted_networks`` nor authenticated: the mail of
strangers. Our own users and networks are the inside of our
administrative domain (ADMD); their mail is not judged by its senders'
published policies, as OpenDKIM's InternalHosts and OpenDMARC's
IgnoreHosts (both 127.0.0.1 by default) leave local mail alone.
With ``mailauth.enabled`` false nothing here is built, and the session
pays one attribute test per message.

Refusals, all off by default (what an OpenDMARC user expects: results
are recorded, filtering is the user's choice):

    reject_dmarc     dmarc=fail whose policy, after pct=, is reject:
                     550 5.7.1 (RFC 7489 §6.6.4, §10.3)
    reject_spf_fail  spf=fail: 550 5.7.23 (RFC 7372 §3.2)
    defer_temperror  a temperror that could change the DMARC outcome:
                     451 4.7.1; without it such mail is accepted with
                     temperror in the header (never refused)

The authserv-id is ``hostname`` (as an A-label), RFC 8601 §2.5.

Who may call what: ``check`` from the event loop only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import ipaddress
import random
from collections.abc import Callable

import idna

from postroom.config import Config
from postroom.delivery import routing
from postroom.mailauth import dkimverify, dmarc, headers, results, spf
from postroom.mailauth.lookups import ThreadDns
from postroom.mailauth.results import DmarcResult, Verdict
from postroom.protocol.smtp.replies import Reply

# Worker threads per SMTP process. Each check holds two while it runs,
# mostly waiting on the DNS; a burst beyond eight checks at once waits
# for a thread rather than starting threads that would only fight for
# the GIL over the CPU part.
WORKERS = 16

SPF_FAILED = Reply.of(
    550, "5.7.23", "SPF check failed: the sender's domain does not allow this host"
)
TRY_LATER = Reply.of(
    451, "4.7.1", "Sender authentication could not be completed, try again later"
)


def dmarc_rejected(domain: str) -> Reply:
    return Reply.of(550, "5.7.1", f"Rejected per the DMARC policy of {domain}")


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """What ``check`` decided. With *refusal* set the message must be
    refused with it; otherwise store *content* (the message minus
    fields forged under our name) with *header* prepended."""

    verdict: Verdict
    header: bytes
    content: bytes
    refusal: Reply | None = None
    removed: int = 0


class InboundAuth:
    """The checks of one SMTP process; see the module docstring.

    *resolver* replaces the one made from the configuration (tests);
    *sample* draws DMARC's pct= lottery.
    """

    def __init__(
        self,
        config: Config,
        *,
        resolver: routing.Resolver | None = None,
        sample: Callable[[], float] = random.random,
    ) -> None:
        settings = config.mailauth
        self.config = settings
        self.authserv_id = _ascii(config.hostname)
        self.timeout = config.delivery.dns_timeout
        self._nameservers = settings.nameservers or config.delivery.nameservers
        self._resolver = resolver
        self._sample = sample
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=WORKERS, thread_name_prefix="mailauth"
        )
        dmarc.load_public_suffix_list()

    @classmethod
    def from_config(cls, config: Config) -> InboundAuth | None:
        """The checks, or None when they are off or no listener is a
        relay listener."""
        if not config.mailauth.enabled:
            return None
        if not any(lst.kind == "relay" for lst in config.smtp.listeners):
            return None
        return cls(config)

    def applies(
        self, listener_kind: str, *, trusted: bool, authenticated: bool
    ) -> bool:
        """Whether a message from this client is checked at all."""
        return listener_kind == "relay" and not trusted and not authenticated

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def resolver(self) -> routing.Resolver:
        """Made at the first check, not at start: with no nameservers
        set, dnspython reads resolv.conf, and a machine without one
        should fail the checks (451, logged), not every start of a
        server that may never see a stranger."""
        if self._resolver is None:
            self._resolver = routing.Resolver(self._nameservers, self.timeout)
        return self._resolver

    async def check(
        self, content: bytes, *, client_ip: str, sender: str, helo: str
    ) -> Outcome:
        """Authenticate one message (module docstring). *content* is the
        message as received, *sender* the MAIL FROM address ("" for
        ``<>``), *helo* the client's HELO/EHLO name."""
        loop = asyncio.get_running_loop()
        dns = ThreadDns(self.resolver, loop, timeout=self.timeout)
        client_ip = _unmapped(client_ip)

        # Step 1: everything that needs the DNS, at once.
        spf_job = loop.run_in_executor(
            self._executor,
            lambda: spf.check(
                dns,
                client_ip=client_ip,
                sender=_ascii_address(sender),
                helo=helo,
                receiver=self.authserv_id,
            ),
        )
        dkim_job = loop.run_in_executor(self._executor, dkimverify.verify, dns, content)
        authors = headers.from_domains(content)
        discoveries: list[asyncio.Future[dmarc.Discovery]] = []
        if len(authors) <= dmarc.MAX_AUTHORS:
            discoveries = [
                asyncio.ensure_future(dmarc.discover(self.resolver, author))
                for author in authors
            ]
        try:
            spf_result, dkim_results = await asyncio.gather(spf_job, dkim_job)
            found = [await d for d in discoveries]
        finally:
            for d in discoveries:
                if not d.done():
                    d.cancel()

        # Step 2: DMARC from what SPF and DKIM found, for each author
        # domain; with several, the strictest failure counts (§6.6.1).
        if found:
            dmarc_result = dmarc.strictest(
                [
                    dmarc.evaluate(
                        discovery,
                        author,
                        spf_result,
                        dkim_results,
                        sample=self._sample,
                    )
                    for discovery, author in zip(found, authors, strict=True)
                ]
            )
        elif authors:
            dmarc_result = DmarcResult(
                "permerror", ",".join(authors), reason="too many From domains"
            )
        else:
            dmarc_result = DmarcResult("none", reason="no From domain")
        verdict = Verdict(spf_result, dkim_results, dmarc_result)

        # Step 3: refuse, or accept with our header and without forgeries.
        refusal = self._refusal(verdict)
        if refusal is not None:
            return Outcome(verdict, b"", content, refusal)
        cleaned, removed = headers.remove_claims(content, self.authserv_id)
        header = results.header(self.authserv_id, verdict)
        return Outcome(verdict, header, cleaned, None, removed)

    def _refusal(self, verdict: Verdict) -> Reply | None:
        settings = self.config
        result = verdict.dmarc
        if (
            settings.reject_dmarc
            and result.result == "fail"
            and result.disposition == "reject"
        ):
            return dmarc_rejected(result.from_domain)
        if settings.reject_spf_fail and verdict.spf.result == "fail":
            return SPF_FAILED
        if settings.defer_temperror and _undecided(verdict):
            return TRY_LATER
        return None


def _undecided(verdict: Verdict) -> bool:
    """A temporary error that could change the outcome: DMARC's own,
    or SPF's when no DMARC check decided the message anyway."""
    if verdict.dmarc.result == "temperror":
        return True
    return verdict.dmarc.result != "pass" and verdict.spf.result == "temperror"


def _unmapped(client_ip: str) -> str:
    # A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d; SPF
    # must match them against ip4: terms (RFC 7208 §5, "ip4"/"ip6").
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return client_ip
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return str(address.ipv4_mapped)
    return client_ip


def _ascii(hostname: str) -> str:
    if hostname.isascii():
        return hostname.lower()
    try:
        return idna.encode(hostname, uts46=True).decode("ascii")
    except idna.IDNAError:
        return hostname.encode("ascii", "replace").decode("ascii")


def _ascii_address(address: str) -> str:
    # SPF works on DNS names: an internationalized domain becomes its
    # A-label (RFC 8616 §4). The local part stays as it came.
    local, at, domain = address.rpartition("@")
    if not at or domain.isascii():
        return address
    return f"{local}@{routing.destination(domain)}"
