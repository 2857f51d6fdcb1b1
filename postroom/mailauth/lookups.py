"""DNS for the authentication checks: blocking calls in a worker thread,
answered by the event loop's asynchronous resolver.

pyspf and dkimpy are synchronous libraries: they call a DNS function
and wait for its answer. We run them in worker threads (their CPU work
must not hold up the SMTP event loop either) and give them a function
that hands each query to the loop (``asyncio.run_coroutine_threadsafe``)
and blocks the worker, and only the worker, until the answer is there.
The query itself goes through ``delivery.routing.Resolver``, dnspython's
asynchronous stub resolver pointed at the configured nameservers, with
its TTL cache shared by every check of the process. No query ever goes
through getaddrinfo or through a library's own resolver.

A lookup has three outcomes that matter to SPF and DKIM alike: records,
no records (NXDOMAIN or NODATA: a definite "nothing there"), and a
failure (timeout, SERVFAIL, REFUSED), which ``TemporaryDnsError``
carries so that the caller can say temperror (RFC 7208 §2.6.6,
RFC 6376 §6.1.2) instead of guessing.

Call ``ThreadDns`` methods only from a worker thread, never from the
loop's own thread: that would deadlock (the loop would wait on itself).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import dns.exception
import dns.name

from postroom.delivery import routing


class TemporaryDnsError(Exception):
    """The DNS did not answer (timeout, SERVFAIL, REFUSED): try later."""


class ThreadDns:
    """Blocking lookups for worker threads, through *resolver* on *loop*.

    *grace* is added to the resolver's own bound on a lookup before a
    worker gives up waiting: the resolver always answers within its
    lifetime, so this only matters if the loop itself is stuck.
    """

    def __init__(
        self,
        resolver: routing.Resolver,
        loop: asyncio.AbstractEventLoop,
        *,
        timeout: float,
        grace: float = 2.0,
    ) -> None:
        self._resolver = resolver
        self._loop = loop
        self._wait = timeout + grace

    def lookup(self, name: str, rdtype: str) -> routing.Lookup:
        """One query; raises TemporaryDnsError when the DNS failed. A
        name that is not a DNS name at all is NXDOMAIN, not a failure:
        the sender chose it (a DKIM s= of "a..b"), and a "temporary"
        answer would let it pass for a DNS outage."""
        if not is_dns_name(name):
            return routing.Lookup(routing.NO_DOMAIN, detail="not a domain name")
        future = asyncio.run_coroutine_threadsafe(
            self._resolver.lookup(name, rdtype), self._loop
        )
        try:
            result = future.result(self._wait)
        except TimeoutError:
            future.cancel()
            raise TemporaryDnsError(f"{name}/{rdtype}: no answer in time") from None
        if result.status == routing.FAILED:
            raise TemporaryDnsError(f"{name}/{rdtype}: {result.detail}")
        return result

    def txt(self, name: str) -> list[bytes]:
        """Each TXT record of *name* as one byte string (its character
        strings joined, RFC 7208 §3.3, RFC 6376 §3.6.2.2); [] for
        NXDOMAIN or NODATA."""
        found = self.lookup(name, "TXT")
        return [b"".join(_strings(r)) for r in found.records]


def is_dns_name(name: str) -> bool:
    """Whether *name* can be asked about at all: no empty label, labels
    of at most 63 octets, 255 in all (RFC 1035 §2.3.4)."""
    try:
        dns.name.from_text(name)
    except (dns.exception.DNSException, UnicodeError):
        return False
    return True


def _strings(record: object) -> Sequence[bytes]:
    strings = getattr(record, "strings", ())
    return [bytes(s) for s in strings]
