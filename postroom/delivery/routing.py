"""Routing: where the mail for one recipient domain goes.

Theory of operation
-------------------

``Router.route(domain)`` turns a recipient domain into a ``Route``: the
transport (local or SMTP), the hosts to try in order with the addresses
to connect to, the TLS policy, and credentials for a smarthost. The
client never resolves a name again; every address comes from here.

The decision, first match wins:

1. a domain in ``local_domains`` is delivered locally;
2. a static route in ``[delivery.routes]``: the domain itself, then its
   parents written ``.example.com`` (closest first), then ``*``. A route
   is ``local`` or a list ``host:port, [host]:port, host``; its hosts
   are used as written, resolved to A/AAAA without an MX lookup, like
   Postfix's ``[host]`` next-hops;
3. the ``smarthost``, with AUTH credentials when a user is set;
4. the domain's MX records (RFC 5321 §5.1): by preference, hosts of
   equal preference shuffled so that load spreads as the domain asks,
   and each host's A then AAAA addresses. No MX at all means the
   domain itself is the "implicit MX". Routes from the DNS then pass
   through ``secure`` when it is set (MTA-STS, ``mtasts.py``).

What the DNS says decides between deferring and bouncing, the one rule
being that only a definite answer may bounce mail:

    NXDOMAIN for the domain         550 5.1.2   bounce
    null MX (RFC 7505)              556 5.1.10  bounce
    no MX and no address record     550 5.4.4   bounce
    MX hosts, none with an address  550 5.4.4   bounce, if every host
                                                lookup was definite
    SERVFAIL, timeout, refused      451 4.4.3   defer
    a static route or smarthost     451 4.4.3   defer: our configuration
      that resolves to nothing                  is wrong, not the mail

Lookups go through ``Resolver``, our own caching front of dnspython's
asynchronous stub resolver, pointed at ``delivery.nameservers`` (the
system's resolv.conf when none are set). Never through getaddrinfo:
that would block the event loop and bypass the nameservers tests and
operators choose. Answers are cached for their TTL (the smallest in a
CNAME chain), negative answers for the SOA minimum (RFC 2308) or 60 s,
failures not at all; concurrent lookups of one name share one query.
The cache reads an injectable monotonic clock, so tests move time.

Domains are keyed in ASCII: ``destination()`` lower-cases, drops a
trailing dot and turns a UTF-8 domain into its A-label (IDNA 2008 with
UTS #46 mapping), cheaply and without I/O, for the scheduler's queues.

Who may call what: everything from one event loop; ``destination``
from anywhere.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.MX
import dns.resolver
import idna

from postroom import logs
from postroom.config import DeliveryConfig
from postroom.delivery.outcome import LOCAL, SMTP, DeliveryError, Route, Target
from postroom.errors import ConfigError
from postroom.protocol.smtp.replies import Reply

log = logging.getLogger("postroom.delivery.routing")

# What one lookup found.
FOUND = "found"
NO_DATA = "no-data"  # the name exists, but has no record of the type
NO_DOMAIN = "no-domain"  # NXDOMAIN
FAILED = "failed"  # SERVFAIL, timeout, refused, garbage: try again later

SMTP_PORT = 25
# A bound on the MX hosts we look at. Postfix stops at 5 addresses;
# we keep more hosts so that the client can skip dead ones, but a
# domain with a hundred MX records must not cost a hundred lookups.
MAX_MX_HOSTS = 10
NEGATIVE_TTL = 60.0
MAX_TTL = 86400.0
MAX_CACHE_ENTRIES = 10_000
_ADDRESS_TYPES = (dns.rdatatype.A, dns.rdatatype.AAAA)


@dataclasses.dataclass(frozen=True, slots=True)
class Lookup:
    """The outcome of one query: a status (FOUND, NO_DATA, NO_DOMAIN,
    FAILED), the records when found, and a word for the logs."""

    status: str
    records: tuple[dns.rdata.Rdata, ...] = ()
    detail: str = ""

    @property
    def addresses(self) -> tuple[str, ...]:
        """The addresses of A and AAAA records, in order."""
        return tuple(
            str(getattr(r, "address", ""))
            for r in self.records
            if r.rdtype in _ADDRESS_TYPES
        )


def destination(domain: str) -> str:
    """The queue key for a recipient domain: ASCII (the A-label form of
    an internationalized name), lower case, no trailing dot. An address
    literal such as ``[192.0.2.1]`` is kept, lower-cased. A name that
    IDNA refuses is returned lower-cased as it is; ``route()`` then
    bounces it."""
    name = domain.strip().rstrip(".")
    if name.isascii() or name.startswith("["):
        return name.lower()
    try:
        return idna.encode(name, uts46=True).decode("ascii")
    except idna.IDNAError:
        return name.lower()


class Resolver:
    """Cached, asynchronous A/AAAA/MX/TXT lookups through dnspython.

    *nameservers* are ``"ip"``, ``"ip:port"`` or ``"[ip]:port"``; empty
    means the system configuration. *timeout* bounds each lookup as a
    whole, over all nameservers and retries.
    """

    def __init__(
        self,
        nameservers: Sequence[str],
        timeout: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if nameservers:
            self._dns = dns.asyncresolver.Resolver(configure=False)
            self._dns.nameservers = [parse_nameserver(s) for s in nameservers]
        else:
            self._dns = dns.asyncresolver.Resolver(configure=True)
        self._dns.lifetime = timeout
        # One try may take part of the budget only, so that a lost UDP
        # packet or a dead first server leaves time for another try.
        self._dns.timeout = min(timeout, 2.0)
        self._clock = clock
        self._cache: dict[tuple[str, str], tuple[float, Lookup]] = {}
        self._pending: dict[tuple[str, str], asyncio.Task[Lookup]] = {}

    @classmethod
    def from_config(
        cls, config: DeliveryConfig, *, clock: Callable[[], float] = time.monotonic
    ) -> Resolver:
        return cls(config.nameservers, config.dns_timeout, clock=clock)

    async def lookup(self, name: str, rdtype: str) -> Lookup:
        """Records of *rdtype* for *name* (absolute, no search list),
        from the cache while their TTL lasts. Never raises for DNS
        trouble: that is a FAILED lookup."""
        key = (name.rstrip(".").lower(), rdtype)
        cached = self._cache.get(key)
        if cached is not None:
            if cached[0] > self._clock():
                return cached[1]
            del self._cache[key]

        # Callers asking for the same name at once share one query. The
        # query is shielded: one caller giving up must not fail the rest.
        task = self._pending.get(key)
        if task is None or task.get_loop() is not asyncio.get_running_loop():
            task = asyncio.ensure_future(self._query(key))
            self._pending[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        return await asyncio.shield(task)

    async def addresses(self, host: str) -> Lookup:
        """A and AAAA records of *host*, A first, as one lookup: FOUND if
        either has an address, else FAILED if either failed, else
        NO_DOMAIN or NO_DATA."""
        v4, v6 = await asyncio.gather(self.lookup(host, "A"), self.lookup(host, "AAAA"))
        if v4.status == FOUND or v6.status == FOUND:
            return Lookup(FOUND, v4.records + v6.records)
        for result in (v4, v6):
            if result.status == FAILED:
                return result
        if v4.status == NO_DOMAIN or v6.status == NO_DOMAIN:
            return Lookup(NO_DOMAIN, detail=v4.detail or v6.detail)
        return Lookup(NO_DATA, detail="no address record")

    def _forget(self, key: tuple[str, str], done: asyncio.Task[Lookup]) -> None:
        if self._pending.get(key) is done:
            del self._pending[key]

    async def _query(self, key: tuple[str, str]) -> Lookup:
        name, rdtype = key
        result, ttl = await self._resolve(name, rdtype)
        if ttl > 0:
            self._store(key, result, ttl)
        return result

    async def _resolve(self, name: str, rdtype: str) -> tuple[Lookup, float]:
        try:
            qname = dns.name.from_text(name)
            answer = await self._dns.resolve(qname, rdtype, search=False)
        except dns.resolver.NXDOMAIN as e:
            responses = e.responses()  # type: ignore[no-untyped-call]
            response = next(iter(responses.values()), None)
            return Lookup(NO_DOMAIN, detail="NXDOMAIN"), _negative_ttl(response)
        except dns.resolver.NoAnswer as e:
            response = e.response()  # type: ignore[no-untyped-call]
            return Lookup(NO_DATA, detail="no data"), _negative_ttl(response)
        except dns.exception.Timeout:
            return Lookup(FAILED, detail="timeout"), 0.0
        except dns.resolver.NoNameservers:
            # Every nameserver answered SERVFAIL (or REFUSED, or could
            # not be reached); dnspython does not retry a SERVFAIL.
            return Lookup(FAILED, detail="SERVFAIL"), 0.0
        except dns.exception.DNSException as e:
            return Lookup(FAILED, detail=type(e).__name__), 0.0
        records = tuple(answer.rrset) if answer.rrset is not None else ()
        ttl = min(float(answer.chaining_result.minimum_ttl), MAX_TTL)
        return Lookup(FOUND, records), ttl

    def _store(self, key: tuple[str, str], result: Lookup, ttl: float) -> None:
        now = self._clock()
        if len(self._cache) >= MAX_CACHE_ENTRIES:
            # Drop what has expired; if that is not enough, the oldest
            # entries (dicts keep insertion order).
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            while len(self._cache) >= MAX_CACHE_ENTRIES:
                del self._cache[next(iter(self._cache))]
        self._cache[key] = (now + ttl, result)


def _negative_ttl(response: dns.message.Message | None) -> float:
    # RFC 2308 §5: a negative answer lives as long as the SOA in its
    # authority section says; without one, a short default.
    if not isinstance(response, dns.message.QueryMessage):
        return NEGATIVE_TTL
    try:
        return min(float(response.resolve_chaining().minimum_ttl), MAX_TTL)
    except dns.exception.DNSException:
        return NEGATIVE_TTL


def parse_nameserver(text: str) -> dns.nameserver.Do53Nameserver:
    """A nameserver setting: ``ip``, ``ip:port`` or ``[ip]:port``."""
    address, port = text.strip(), 53
    if address.startswith("["):
        address, _, rest = address[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else 53
    elif address.count(":") == 1:
        address, _, port_text = address.partition(":")
        port = int(port_text)
    return dns.nameserver.Do53Nameserver(address, port)


class Router:
    """Decides the route of each recipient domain (module docstring).

    *local_domains* are the domains we deliver locally; *clock* drives
    the DNS cache; *rng* shuffles MX hosts of equal preference (seed it
    in tests); *resolver* replaces the one made from *config*. *secure*,
    if given (or set later as the attribute), rewrites every route that
    came from the DNS: ``MtaSts.secure``, wired as
    ``router.secure = MtaSts.from_config(config, router.resolver).secure``
    because the policy lookups share the router's resolver. Raises
    ConfigError for a malformed static route or smarthost.
    """

    def __init__(
        self,
        config: DeliveryConfig,
        *,
        local_domains: Sequence[str],
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        resolver: Resolver | None = None,
        secure: Callable[[Route], Awaitable[Route]] | None = None,
    ) -> None:
        self.config = config
        self.secure = secure
        self.resolver = resolver or Resolver.from_config(config, clock=clock)
        self._rng = rng or random.Random()
        self._local = frozenset(destination(d) for d in local_domains)
        self._routes = {
            key.strip().lower().rstrip("."): parse_route(f"delivery.routes.{key}", v)
            for key, v in config.routes.items()
        }
        self._smarthost = (
            parse_hosts("delivery.smarthost", config.smarthost)
            if config.smarthost
            else None
        )
        self._auth = (
            (config.smarthost_user, config.smarthost_password)
            if config.smarthost_user
            else None
        )

    def destination(self, domain: str) -> str:
        """The queue key for *domain*; see the module function."""
        return destination(domain)

    async def route(self, domain: str) -> Route:
        """The route for mail to *domain*.

        Raises DeliveryError with a 5xx reply when the domain cannot
        receive mail (it does not exist, has a null MX, or has no host
        with an address) and with a 4xx reply when DNS failed for now.
        """
        dest = destination(domain)
        if dest in self._local:
            return Route(dest, LOCAL)

        # A static route, else the smarthost, else the DNS.
        static = self._static_route(dest)
        if isinstance(static, str):
            return Route(dest, LOCAL)
        if static is not None:
            return await self._fixed_route(dest, static, auth=None)
        if self._smarthost is not None:
            return await self._fixed_route(dest, self._smarthost, auth=self._auth)
        if dest.startswith("["):
            return self._literal_route(dest)
        _check_name(dest)
        route = await self._mx_route(dest)
        return route if self.secure is None else await self.secure(route)

    def tls_policy(self, dest: str) -> str:
        """The TLS policy for *dest*: its own, else the general one."""
        policy = self.config.destinations.get(dest)
        return policy.tls if policy is not None and policy.tls else self.config.tls

    # Static routes and the smarthost.

    def _static_route(self, dest: str) -> Hosts | str | None:
        if dest in self._routes:
            return self._routes[dest]
        labels = dest.split(".")
        for i in range(1, len(labels)):
            parent = "." + ".".join(labels[i:])
            if parent in self._routes:
                return self._routes[parent]
        return self._routes.get("*")

    async def _fixed_route(
        self, dest: str, hosts: Hosts, *, auth: tuple[str, str] | None
    ) -> Route:
        lookups = await asyncio.gather(*(self._host_addresses(h) for h, _ in hosts))
        targets = _targets(
            [(h, port, r) for (h, port), r in zip(hosts, lookups, strict=True)]
        )
        if not targets:
            # The fault is in our configuration or our DNS, never the
            # recipient's: defer, and name the hosts only in the log.
            log.warning(
                "route unresolved destination=%s hosts=%s",
                dest,
                logs.quote(",".join(h for h, _ in hosts)),
            )
            raise DeliveryError(
                Reply.of(451, "4.4.3", f"Relay host for {dest} cannot be resolved now")
            )
        return Route(dest, SMTP, targets, tls=self.tls_policy(dest), auth=auth)

    async def _host_addresses(self, host: str) -> Lookup:
        # An IP literal where a name belongs (a route, or an MX record
        # that breaks RFC 5321's rule) is used as it is, not resolved.
        if _is_ip(host):
            return Lookup(FOUND, (_address_record(host),))
        return await self.resolver.addresses(host)

    def _literal_route(self, dest: str) -> Route:
        # user@[192.0.2.1] or user@[IPv6:2001:db8::1] (RFC 5321 §4.1.3).
        text = dest[1:-1] if dest.endswith("]") else dest[1:]
        if text.lower().startswith("ipv6:"):
            text = text[5:]
        if not _is_ip(text):
            raise DeliveryError(_bad_domain(dest))
        target = Target(text, self.config.mx_port, (text,))
        return Route(dest, SMTP, (target,), tls=self.tls_policy(dest))

    # The DNS.

    async def _mx_route(self, dest: str) -> Route:
        mx = await self.resolver.lookup(dest, "MX")
        if mx.status == NO_DOMAIN:
            raise DeliveryError(_no_domain(dest))
        if mx.status == FAILED:
            raise DeliveryError(_dns_failed(dest, "MX", mx.detail))
        if mx.status == NO_DATA:
            return await self._implicit_route(dest)

        hosts = self._order_mx(dest, mx.records)
        lookups = await asyncio.gather(*(self._host_addresses(h) for h in hosts))
        targets = _targets(
            [
                (h, self.config.mx_port, found)
                for h, found in zip(hosts, lookups, strict=True)
            ]
        )
        if targets:
            return Route(
                dest, SMTP, targets, tls=self.tls_policy(dest), mx=True, dns=True
            )

        # No MX host has an address. As Postfix does: defer if any
        # lookup failed (it may work next time), bounce if DNS said
        # definitely that none of them exists.
        for host, result in zip(hosts, lookups, strict=True):
            if result.status == FAILED:
                raise DeliveryError(_dns_failed(host, "A/AAAA", result.detail))
        raise DeliveryError(
            Reply.of(550, "5.4.4", f"No mail host for {dest} has an address")
        )

    def _order_mx(self, dest: str, records: tuple[dns.rdata.Rdata, ...]) -> list[str]:
        exchanges = [
            (int(r.preference), r.exchange)
            for r in records
            if isinstance(r, dns.rdtypes.ANY.MX.MX)
        ]

        # RFC 7505 §3: a single MX of preference 0 and the root as its
        # host says the domain takes no mail. A root MX among real ones
        # is a mistake the RFC forbids; we skip it and use the rest.
        real = [(p, x) for p, x in exchanges if x != dns.name.root]
        if not real:
            raise DeliveryError(
                Reply.of(556, "5.1.10", f"Domain {dest} does not accept mail (null MX)")
            )

        # RFC 5321 §5.1: lowest preference first; hosts of equal
        # preference in random order.
        by_preference: dict[int, list[str]] = {}
        for preference, exchange in real:
            host = exchange.to_text(omit_final_dot=True).lower()
            by_preference.setdefault(preference, []).append(host)
        ordered: list[str] = []
        for preference in sorted(by_preference):
            group = list(dict.fromkeys(by_preference[preference]))
            self._rng.shuffle(group)
            ordered.extend(h for h in group if h not in ordered)
        # XXX: RFC 5321 §5.1 also asks us to drop MX hosts that are
        # ourselves and those less preferred, against mail loops. We do
        # not know our own MX names yet; a loop still ends at the hop
        # limit of the Received headers.
        return ordered[:MAX_MX_HOSTS]

    async def _implicit_route(self, dest: str) -> Route:
        # RFC 5321 §5.1: no MX records, so the domain's own addresses
        # stand for an MX of preference 0. The route is not "mx" (no MX
        # record named it), yet MTA-STS still covers it (mtasts.py).
        found = await self.resolver.addresses(dest)
        if found.status == FOUND:
            target = Target(dest, self.config.mx_port, found.addresses)
            return Route(dest, SMTP, (target,), tls=self.tls_policy(dest), dns=True)
        if found.status == FAILED:
            raise DeliveryError(_dns_failed(dest, "A/AAAA", found.detail))
        if found.status == NO_DOMAIN:
            raise DeliveryError(_no_domain(dest))
        raise DeliveryError(
            Reply.of(550, "5.4.4", f"Domain {dest} has no MX and no address")
        )


# Where a static route or the smarthost points: (host, port) pairs.
Hosts = tuple[tuple[str, int], ...]


def parse_route(setting: str, text: str) -> Hosts | str:
    """A static route: the string ``"local"``, or its hosts as
    ``parse_hosts`` reads them."""
    if text.strip().lower() == LOCAL:
        return LOCAL
    return parse_hosts(setting, text)


def parse_hosts(setting: str, text: str) -> Hosts:
    """Parse a comma-separated list of ``host``, ``host:port``,
    ``[host]``, ``[host]:port`` (port 25 by default; an IPv6 address
    needs the brackets to carry a port). Raises ConfigError naming
    *setting*."""
    hosts: list[tuple[str, int]] = []
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        hosts.append(_parse_host(setting, item))
    if not hosts:
        raise ConfigError(f"{setting}: expected 'local' or host:port, got {text!r}")
    return tuple(hosts)


def _parse_host(setting: str, item: str) -> tuple[str, int]:
    if _is_ip(item):
        return item, SMTP_PORT
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ("" if not rest else "x")
    else:
        host, sep, port_text = item.rpartition(":")
        if not sep:
            host, port_text = item, ""
    digits = port_text.isascii() and port_text.isdigit()
    if port_text and (not digits or not 0 < int(port_text) < 65536):
        raise ConfigError(f"{setting}: expected host:port, got {item!r}")
    if not host:
        raise ConfigError(f"{setting}: expected host:port, got {item!r}")
    name = host if _is_ip(host) else destination(host)
    return name, int(port_text) if port_text else SMTP_PORT


def _targets(found: list[tuple[str, int, Lookup]]) -> tuple[Target, ...]:
    # One Target per host that has addresses, each address only once:
    # two MX names for one machine should not cost two failed connects.
    seen: set[str] = set()
    targets = []
    for host, port, lookup in found:
        if lookup.status != FOUND:
            continue
        fresh = tuple(a for a in lookup.addresses if a not in seen)
        seen.update(fresh)
        if fresh:
            targets.append(Target(host, port, fresh))
    return tuple(targets)


def _address_record(ip: str) -> dns.rdata.Rdata:
    rdtype = dns.rdatatype.AAAA if ":" in ip else dns.rdatatype.A
    return dns.rdata.from_text(dns.rdataclass.IN, rdtype, ip)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _check_name(dest: str) -> None:
    # Cheap syntax first: an invalid name is a permanent failure and
    # must not reach the DNS as a temporary one.
    if not dest or not dest.isascii():
        raise DeliveryError(_bad_domain(dest))
    try:
        dns.name.from_text(dest)
    except dns.exception.DNSException:
        raise DeliveryError(_bad_domain(dest)) from None


def _bad_domain(dest: str) -> Reply:
    return Reply.of(550, "5.1.2", f"Invalid domain name {dest!r}")


def _no_domain(dest: str) -> Reply:
    return Reply.of(550, "5.1.2", f"Domain {dest} does not exist")


def _dns_failed(name: str, rdtype: str, detail: str) -> Reply:
    return Reply.of(
        451, "4.4.3", f"DNS lookup of {name} ({rdtype}) failed: {detail}; will retry"
    )
