"""MTA-STS (RFC 8461): a recipient domain's promise of authenticated TLS.

Theory of operation
-------------------

A domain that publishes MTA-STS has a TXT record
``_mta-sts.<domain>`` (``v=STSv1; id=<id>``) and serves a policy at
``https://mta-sts.<domain>/.well-known/mta-sts.txt``::

    version: STSv1
    mode: enforce
    mx: mx1.example.com
    mx: *.backup.example.com
    max_age: 604800

``MtaSts.policy(domain)`` finds the policy in four steps:

1. look up the TXT record through the router's ``Resolver`` (cached by
   its TTL); exactly one ``v=STSv1`` record with a valid id counts;
2. if a cached, unexpired policy has that id, it is the answer: a
   policy is fetched again only when the id changes or ``max_age``
   runs out;
3. otherwise resolve ``mta-sts.<domain>``, again through our resolver,
   and GET the policy over HTTPS from that address, verifying the
   certificate for the name; no redirects, at most 64 KB, bounded in
   time;
4. parse and cache it for ``max_age`` seconds.

Failures never stop mail on their own (RFC 8461 §5.1): with no TXT
record or a failed fetch we use the cached policy while it lasts, and
otherwise deliver as if the domain had none. A failed fetch is not
tried again for the same id for ``retry_after`` seconds, so a dead
policy server costs one attempt, not one per message.

``apply(route, policy)`` then makes the route obey: in ``enforce``
mode only MX hosts matching a policy ``mx`` pattern stay, and TLS must
verify (the client checks the certificate against the MX name); if no
host is left the attempt is deferred (4.7.5). ``testing`` mode only
logs what enforce would have removed; ``none`` changes nothing. Only
routes from the DNS are subject to a policy: an operator's static
route or smarthost is their own business.

Fetching from a name an attacker may control invites requests into
our own network. So the policy host's address must be globally
routable or inside ``allowed_networks`` (tests allow 127.0.0.0/8).

Who may call what: everything from one event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import re
import ssl
import time
from collections.abc import Callable, Sequence

from postroom import logs
from postroom.config import DeliveryConfig
from postroom.delivery import routing
from postroom.delivery.outcome import SMTP, DeliveryError, Route
from postroom.protocol.smtp.replies import Reply

log = logging.getLogger("postroom.delivery.mtasts")

ENFORCE = "enforce"
TESTING = "testing"
NONE = "none"
MODES = (ENFORCE, TESTING, NONE)

POLICY_PATH = "/.well-known/mta-sts.txt"
MAX_POLICY_SIZE = 64 * 1024
# RFC 8461 §3.2: max_age is at most 31557600 seconds (about a year).
MAX_AGE_LIMIT = 31_557_600
_ID = re.compile(r"[A-Za-z0-9]{1,32}")


class PolicyError(Exception):
    """A policy could not be fetched or parsed; the text is for logs."""


# What a fetch may fail with: ours, the network's and TLS's (OSError),
# and the stream's when the server hangs up or floods us.
_FETCH_ERRORS = (
    PolicyError,
    OSError,
    TimeoutError,
    asyncio.IncompleteReadError,
    asyncio.LimitOverrunError,
)


@dataclasses.dataclass(frozen=True, slots=True)
class Policy:
    """One domain's parsed policy and the TXT id it was fetched under."""

    id: str
    mode: str
    mx: tuple[str, ...]
    max_age: int

    def matches(self, host: str) -> bool:
        """Whether MX *host* is allowed (RFC 8461 §4.1): equal to a
        pattern, or matching ``*.suffix`` with exactly one more label
        on the left; case does not matter."""
        host = host.rstrip(".").lower()
        for pattern in self.mx:
            if pattern.startswith("*."):
                suffix = pattern[1:]
                label = host[: -len(suffix)]
                if host.endswith(suffix) and label and "." not in label:
                    return True
            elif host == pattern:
                return True
        return False


@dataclasses.dataclass(slots=True)
class _Cached:
    policy: Policy
    expires: float


class MtaSts:
    """Discovers, fetches and caches MTA-STS policies, and applies them.

    *resolver* is the router's, so that discovery and the policy host
    use the same nameservers as delivery. *ca_file* holds the CAs
    policy hosts must chain to (None: the system's trust store);
    *https_port* exists for tests, as does *clock*. *timeout* bounds
    one fetch as a whole, connecting included; *retry_after* is how
    long a failed fetch is not repeated for the same policy id.
    """

    def __init__(
        self,
        resolver: routing.Resolver,
        *,
        https_port: int = 443,
        ca_file: str | None = None,
        allowed_networks: Sequence[str] = (),
        timeout: float = 30.0,
        retry_after: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.resolver = resolver
        self.https_port = https_port
        self.timeout = timeout
        self.retry_after = retry_after
        self._clock = clock
        self._networks = [
            ipaddress.ip_network(n, strict=False) for n in allowed_networks
        ]
        self._context = ssl.create_default_context(cafile=ca_file)
        self._context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._cache: dict[str, _Cached] = {}
        self._failed: dict[tuple[str, str], float] = {}
        self._pending: dict[tuple[str, str], asyncio.Task[Policy | None]] = {}

    @classmethod
    def from_config(
        cls,
        config: DeliveryConfig,
        resolver: routing.Resolver,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> MtaSts:
        """An MtaSts with the CA file and networks of *config*."""
        return cls(
            resolver,
            ca_file=config.tls_ca_file or None,
            allowed_networks=config.allowed_networks,
            clock=clock,
        )

    async def policy(self, domain: str) -> Policy | None:
        """The policy in force for *domain*, or None. Never raises for
        DNS, network or policy trouble (RFC 8461 §5.1)."""
        domain = routing.destination(domain)
        now = self._clock()
        cached = self._cache.get(domain)
        if cached is not None and cached.expires <= now:
            del self._cache[domain]
            cached = None
        held = cached.policy if cached is not None else None

        policy_id = await self._discover(domain)
        if policy_id is None:
            # No record, or the lookup failed: a cached policy holds
            # until it expires, which is what makes stripping the TXT
            # record from our DNS answers useless to an attacker.
            return held
        if held is not None and held.id == policy_id:
            return held
        if self._failed.get((domain, policy_id), 0.0) > now:
            return held

        # A new id (or none cached): fetch, once for concurrent callers.
        key = (domain, policy_id)
        task = self._pending.get(key)
        if task is None or task.get_loop() is not asyncio.get_running_loop():
            task = asyncio.ensure_future(self._refresh(domain, policy_id))
            self._pending[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        fetched = await asyncio.shield(task)
        return fetched if fetched is not None else held

    def apply(self, route: Route, policy: Policy | None) -> Route:
        """*route* as *policy* allows it: in enforce mode only matching
        MX hosts and TLS "verify"; otherwise *route* unchanged. Raises
        DeliveryError (451 4.7.5) when enforce leaves no host."""
        if policy is None or policy.mode == NONE or not _subject_to_policy(route):
            return route
        allowed = tuple(t for t in route.targets if policy.matches(t.host))
        refused = [t.host for t in route.targets if t not in allowed]

        if policy.mode == TESTING:
            if refused:
                log.warning(
                    "mta-sts testing-mode mismatch domain=%s mx=%s",
                    route.destination,
                    logs.quote(",".join(refused)),
                )
            return route

        if refused:
            log.info(
                "mta-sts enforce skips domain=%s mx=%s",
                route.destination,
                logs.quote(",".join(refused)),
            )
        # XXX: RFC 8461 §5.1 suggests fetching the policy again before
        # failing here. We refetch only when the TXT id changes, which a
        # domain that changes its MX hosts and policy must do anyway;
        # the deferral gives it until the next attempt.
        if not allowed:
            raise DeliveryError(
                Reply.of(
                    451,
                    "4.7.5",
                    f"No mail host of {route.destination} is allowed by its "
                    "MTA-STS policy",
                )
            )
        return dataclasses.replace(route, targets=allowed, tls="verify")

    async def secure(self, route: Route) -> Route:
        """Look up the policy of *route*'s destination and apply it; the
        one call the scheduler needs. Routes not from the DNS pass
        without a lookup."""
        if not _subject_to_policy(route):
            return route
        return self.apply(route, await self.policy(route.destination))

    # Discovery.

    async def _discover(self, domain: str) -> str | None:
        found = await self.resolver.lookup(f"_mta-sts.{domain}", "TXT")
        if found.status != routing.FOUND:
            return None
        texts = []
        for record in found.records:
            strings = getattr(record, "strings", ())
            texts.append(b"".join(strings).decode("ascii", "replace"))
        return parse_record(texts)

    # Fetching.

    def _forget(self, key: tuple[str, str], done: asyncio.Task[Policy | None]) -> None:
        if self._pending.get(key) is done:
            del self._pending[key]

    async def _refresh(self, domain: str, policy_id: str) -> Policy | None:
        try:
            async with asyncio.timeout(self.timeout):
                body = await self._fetch(domain)
            policy = parse_policy(body, policy_id)
        except _FETCH_ERRORS as e:
            log.warning(
                "mta-sts fetch failed domain=%s id=%s error=%s",
                domain,
                policy_id,
                logs.quote(str(e) or type(e).__name__),
            )
            self._remember_failure(domain, policy_id)
            return None
        self._cache[domain] = _Cached(policy, self._clock() + policy.max_age)
        log.info(
            "mta-sts policy domain=%s id=%s mode=%s max_age=%d",
            domain,
            policy.id,
            policy.mode,
            policy.max_age,
        )
        return policy

    def _remember_failure(self, domain: str, policy_id: str) -> None:
        now = self._clock()
        self._failed = {k: t for k, t in self._failed.items() if t > now}
        self._failed[(domain, policy_id)] = now + self.retry_after

    async def _fetch(self, domain: str) -> bytes:
        host = f"mta-sts.{domain}"
        found = await self.resolver.addresses(host)
        if found.status != routing.FOUND:
            raise PolicyError(f"{host}: no address ({found.detail or found.status})")
        addresses = [a for a in found.addresses if self._allowed(a)]
        if not addresses:
            raise PolicyError(f"{host}: address not allowed")

        # Each address in turn, like a browser, until one answers.
        error: Exception = PolicyError(f"{host}: no address answered")
        for address in addresses:
            try:
                return await self._get(address, host)
            except _FETCH_ERRORS as e:
                error = e
        raise error

    def _allowed(self, address: str) -> bool:
        ip = ipaddress.ip_address(address)
        return ip.is_global or any(ip in net for net in self._networks)

    async def _get(self, address: str, host: str) -> bytes:
        reader, writer = await asyncio.open_connection(
            address, self.https_port, ssl=self._context, server_hostname=host
        )
        try:
            authority = host if self.https_port == 443 else f"{host}:{self.https_port}"
            writer.write(
                f"GET {POLICY_PATH} HTTP/1.1\r\n"
                f"Host: {authority}\r\n"
                "User-Agent: Postroom\r\n"
                "Accept: text/plain\r\n"
                "Connection: close\r\n\r\n".encode("ascii")
            )
            await writer.drain()
            return await read_response(reader)
        finally:
            writer.close()
            # The policy is read; a rude close changes nothing.
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def read_response(reader: asyncio.StreamReader) -> bytes:
    """The body of a 200 response from *reader*, at most
    ``MAX_POLICY_SIZE`` bytes. Raises PolicyError for any other status
    (redirects are not followed, RFC 8461 §3.3), a media type other
    than text/plain, a body too large, or a malformed response."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.LimitOverrunError, asyncio.IncompleteReadError):
        raise PolicyError("malformed HTTP response header") from None
    status, headers = _parse_head(head)
    if status != 200:
        raise PolicyError(f"HTTP status {status}")
    media = headers.get("content-type", "text/plain").split(";")[0].strip()
    if media.lower() != "text/plain":
        raise PolicyError(f"media type {media!r}, not text/plain")

    if "chunked" in headers.get("transfer-encoding", "").lower():
        return await _read_chunked(reader)
    if "content-length" in headers:
        length = headers["content-length"]
        if not (length.isascii() and length.isdigit()) or int(length) > MAX_POLICY_SIZE:
            raise PolicyError(f"bad or too large Content-Length {length!r}")
        return await reader.readexactly(int(length))
    body = bytearray()
    while chunk := await reader.read(MAX_POLICY_SIZE + 1 - len(body)):
        body += chunk
        if len(body) > MAX_POLICY_SIZE:
            raise PolicyError("policy too large")
    return bytes(body)


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if (
        len(parts) < 2
        or not parts[0].startswith("HTTP/1.")
        or not (parts[1].isascii() and parts[1].isdigit())
    ):
        raise PolicyError(f"malformed status line {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        line = await reader.readuntil(b"\r\n")
        try:
            size = int(line.split(b";")[0].strip(), 16)
        except ValueError:
            raise PolicyError("malformed chunk size") from None
        if size == 0:
            return bytes(body)  # trailers, if any, are of no interest
        if len(body) + size > MAX_POLICY_SIZE:
            raise PolicyError("policy too large")
        body += await reader.readexactly(size)
        await reader.readexactly(2)


def parse_record(texts: Sequence[str]) -> str | None:
    """The policy id from the TXT records of ``_mta-sts.<domain>``, or
    None: records not starting ``v=STSv1`` are ignored, and anything
    but exactly one valid record means no policy (RFC 8461 §3.1)."""
    records = [t for t in texts if t.startswith("v=STSv1")]
    if len(records) != 1:
        return None
    fields = [f.strip() for f in records[0].split(";")]
    if fields[0] != "v=STSv1":
        return None
    for field in fields[1:]:
        key, _, value = field.partition("=")
        if key.strip() == "id":
            return value.strip() if _ID.fullmatch(value.strip()) else None
    return None


def parse_policy(body: bytes, policy_id: str) -> Policy:
    """Parse a policy file (RFC 8461 §3.2). Unknown keys are ignored;
    a wrong version, an unknown mode, a missing or bad max_age, or no
    ``mx`` in a mode that needs one raise PolicyError."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError("policy is not UTF-8") from None
    fields: dict[str, str] = {}
    mx: list[str] = []
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "mx":
            mx.append(value.rstrip(".").lower())
        else:
            fields.setdefault(key, value)

    if fields.get("version") != "STSv1":
        raise PolicyError(f"version {fields.get('version')!r}, not STSv1")
    mode = fields.get("mode", "")
    if mode not in MODES:
        raise PolicyError(f"unknown mode {mode!r}")
    max_age = fields.get("max_age", "")
    if not (max_age.isascii() and max_age.isdigit()) or len(max_age) > 10:
        raise PolicyError(f"bad max_age {max_age!r}")
    if mode != NONE and not mx:
        raise PolicyError(f"mode {mode} without mx")
    return Policy(policy_id, mode, tuple(mx), min(int(max_age), MAX_AGE_LIMIT))


def _subject_to_policy(route: Route) -> bool:
    # Routes from MX records, and the implicit MX (the domain's own
    # address record): an attacker who strips the MX records from our
    # answers must not escape an enforced policy that way.
    return route.transport == SMTP and route.dns and route.auth is None
