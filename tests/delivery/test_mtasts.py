"""MTA-STS: discovery, the HTTPS fetch, the cache, and enforce, testing
and none applied to routes.

Each test runs a TestDnsServer and a small HTTPS server on 127.0.0.1
with a certificate for every ``mta-sts.*.test`` name, signed by a CA
made at test time; the server answers by Host header from a table the
test edits, and counts requests, so a cache hit is a request that did
not arrive. Time is a FakeClock shared by the DNS cache and MtaSts.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from postroom.config import DeliveryConfig
from postroom.delivery import mtasts
from postroom.delivery.mtasts import MtaSts, Policy, PolicyError
from postroom.delivery.outcome import SMTP, DeliveryError, Route, Target
from postroom.delivery.routing import Router
from postroom.testing.clock import FakeClock
from postroom.testing.dns import TestDnsServer

DOMAINS = ("secure", "testing", "none", "implicit")
ENFORCE_POLICY = (
    b"version: STSv1\r\nmode: enforce\r\nmx: *.secure.test\r\nmax_age: 86400\r\n"
)


def zone() -> dict[str, dict[str, object]]:
    records: dict[str, dict[str, object]] = {
        "mx1.secure.test": {"A": ["127.0.0.2"]},
        "mx.elsewhere.test": {"A": ["127.0.0.3"]},
        "implicit.test": {"A": ["127.0.0.4"]},
        "nopolicy.test": {"MX": [(10, "mx.elsewhere.test")]},
    }
    for name in DOMAINS:
        domain = f"{name}.test"
        if name != "implicit":
            records[domain] = {
                "MX": [(10, "mx1.secure.test"), (20, "mx.elsewhere.test")]
            }
        records[f"_mta-sts.{domain}"] = {"TXT": ["v=STSv1; id=1"]}
        records[f"mta-sts.{domain}"] = {"A": ["127.0.0.1"]}
    return records


def http(
    body: bytes,
    *,
    status: str = "200 OK",
    media: str = "text/plain",
    chunked: bool = False,
) -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: {media}\r\nConnection: close\r\n"
    if chunked:
        middle = len(body) // 2
        parts = [body[:middle], body[middle:]]
        encoded = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts if p)
        return (
            (head + "Transfer-Encoding: chunked\r\n\r\n").encode()
            + encoded
            + (b"0\r\n\r\n")
        )
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def policy_file(mode: str, *mx: str, max_age: int = 86400) -> bytes:
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {m}" for m in mx)]
    return ("\r\n".join([*lines, f"max_age: {max_age}"]) + "\r\n").encode()


# Certificates.


@dataclass
class Pki:
    ca: Path
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName(f"mta-sts.{d}.test") for d in DOMAINS]
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mta-sts.secure.test")])
        )
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    pki = Pki(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pki


# The HTTPS policy server.


@dataclass
class PolicyServer:
    port: int = 0
    responses: dict[str, bytes] = field(default_factory=dict)
    requests: Counter[str] = field(default_factory=Counter)
    paths: list[str] = field(default_factory=list)
    delay: float = 0.0

    async def handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            self.paths.append(lines[0])
            host = next(
                line.split(":", 1)[1].strip()
                for line in lines
                if line.lower().startswith("host:")
            ).split(":")[0]
            self.requests[host] += 1
            if self.delay:
                await asyncio.sleep(self.delay)
            writer.write(self.responses.get(host, http(b"", status="404 Not Found")))
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def https(pki: Pki) -> AsyncIterator[PolicyServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.cert, pki.key)
    policies = PolicyServer()
    for name in DOMAINS:
        mode = name if name in ("testing", "none") else "enforce"
        mx = "mx.implicit.test" if name == "implicit" else "*.secure.test"
        policies.responses[f"mta-sts.{name}.test"] = http(policy_file(mode, mx))
    server = await asyncio.start_server(policies.handle, "127.0.0.1", 0, ssl=context)
    policies.port = server.sockets[0].getsockname()[1]
    yield policies
    server.close()
    await server.wait_closed()


@pytest.fixture(scope="module")
def dns_server() -> Iterator[TestDnsServer]:
    with TestDnsServer() as server:
        yield server


@pytest.fixture
def dns(dns_server: TestDnsServer) -> TestDnsServer:
    dns_server.load(zone())
    dns_server.reset_queries()
    return dns_server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def router(dns: TestDnsServer, clock: FakeClock) -> Router:
    config = DeliveryConfig(nameservers=[dns.address], dns_timeout=0.5)
    return Router(config, local_domains=(), clock=clock.time)


@pytest.fixture
def sts(router: Router, https: PolicyServer, pki: Pki, clock: FakeClock) -> MtaSts:
    return MtaSts(
        router.resolver,
        https_port=https.port,
        ca_file=str(pki.ca),
        allowed_networks=["127.0.0.0/8"],
        timeout=2.0,
        clock=clock.time,
    )


# Enforce, testing, none.


async def test_enforce_keeps_matching_mx_and_requires_verify(
    router: Router, sts: MtaSts, https: PolicyServer
) -> None:
    policy = await sts.policy("secure.test")
    assert policy == Policy("1", "enforce", ("*.secure.test",), 86400)
    assert https.paths == ["GET /.well-known/mta-sts.txt HTTP/1.1"]

    route = await router.route("secure.test")
    assert len(route.targets) == 2
    assert sts.apply(route, policy) == Route(
        "secure.test",
        SMTP,
        (Target("mx1.secure.test", 25, ("127.0.0.2",)),),
        tls="verify",
        mx=True,
        dns=True,
    )


async def test_router_hook(router: Router, sts: MtaSts) -> None:
    router.secure = sts.secure
    route = await router.route("secure.test")
    assert ([t.host for t in route.targets], route.tls) == (
        ["mx1.secure.test"],
        "verify",
    )
    # A domain without a policy passes unchanged.
    route = await router.route("nopolicy.test")
    assert route.tls == "opportunistic"


async def test_enforce_without_a_matching_mx_defers(
    router: Router, sts: MtaSts, dns: TestDnsServer
) -> None:
    dns.set("secure.test", "MX", [(10, "mx.elsewhere.test")])
    route = await router.route("secure.test")
    with pytest.raises(DeliveryError) as info:
        await sts.secure(route)
    assert (info.value.reply.code, info.value.reply.enhanced) == (451, "4.7.5")


async def test_enforce_covers_the_implicit_mx(router: Router, sts: MtaSts) -> None:
    # Stripping the MX records must not escape an enforced policy.
    route = await router.route("implicit.test")
    assert route.mx is False
    with pytest.raises(DeliveryError) as info:
        await sts.secure(route)
    assert info.value.reply.enhanced == "4.7.5"


async def test_testing_mode_only_logs(
    router: Router, sts: MtaSts, caplog: pytest.LogCaptureFixture
) -> None:
    route = await router.route("testing.test")
    with caplog.at_level(logging.WARNING, logger="postroom.delivery.mtasts"):
        assert await sts.secure(route) == route
    assert "testing-mode mismatch domain=testing.test mx=mx.elsewhere.test" in (
        caplog.text
    )


async def test_mode_none_changes_nothing(router: Router, sts: MtaSts) -> None:
    route = await router.route("none.test")
    policy = await sts.policy("none.test")
    assert policy is not None and policy.mode == "none"
    assert sts.apply(route, policy) == route


async def test_static_routes_are_not_subject(
    dns: TestDnsServer, sts: MtaSts, https: PolicyServer
) -> None:
    route = Route("secure.test", SMTP, (Target("relay.test", 2525, ("127.0.0.9",)),))
    assert await sts.secure(route) == route
    smarthost = Route(
        "secure.test",
        SMTP,
        (Target("secure.test", 25, ("127.0.0.9",)),),
        auth=("a", "b"),
    )
    assert await sts.secure(smarthost) == smarthost
    assert dns.queries("_mta-sts.secure.test") == 0
    assert not https.requests


async def test_no_txt_record_no_policy(
    sts: MtaSts, https: PolicyServer, dns: TestDnsServer
) -> None:
    assert await sts.policy("nopolicy.test") is None
    dns.servfail("_mta-sts.secure.test")
    assert await sts.policy("secure.test") is None
    assert not https.requests


# The cache.


async def test_policy_cached_while_id_unchanged(
    sts: MtaSts, https: PolicyServer, dns: TestDnsServer, clock: FakeClock
) -> None:
    first = await sts.policy("secure.test")
    assert await sts.policy("Secure.Test.") == first
    assert https.requests["mta-sts.secure.test"] == 1
    assert dns.queries("_mta-sts.secure.test", "TXT") == 1  # the TXT TTL

    # The TXT record is asked again after its TTL; the same id means
    # the cached policy stands.
    clock.advance(301)
    assert await sts.policy("secure.test") == first
    assert dns.queries("_mta-sts.secure.test", "TXT") == 2
    assert https.requests["mta-sts.secure.test"] == 1


async def test_new_id_refetches(
    sts: MtaSts, https: PolicyServer, dns: TestDnsServer, clock: FakeClock
) -> None:
    await sts.policy("secure.test")
    dns.set("_mta-sts.secure.test", "TXT", ["v=STSv1; id=2"])
    https.responses["mta-sts.secure.test"] = http(
        policy_file("testing", "*.secure.test")
    )

    clock.advance(301)
    policy = await sts.policy("secure.test")
    assert policy == Policy("2", "testing", ("*.secure.test",), 86400)
    assert https.requests["mta-sts.secure.test"] == 2


async def test_expired_policy_refetches(
    sts: MtaSts, https: PolicyServer, clock: FakeClock
) -> None:
    https.responses["mta-sts.secure.test"] = http(
        policy_file("enforce", "*.secure.test", max_age=600)
    )
    await sts.policy("secure.test")
    clock.advance(599)
    await sts.policy("secure.test")
    assert https.requests["mta-sts.secure.test"] == 1
    clock.advance(2)
    await sts.policy("secure.test")
    assert https.requests["mta-sts.secure.test"] == 2


async def test_cached_policy_outlives_a_vanished_txt_record(
    sts: MtaSts, dns: TestDnsServer, clock: FakeClock
) -> None:
    policy = await sts.policy("secure.test")
    dns.delete("_mta-sts.secure.test")
    clock.advance(301)
    assert await sts.policy("secure.test") == policy
    clock.advance(86400)
    assert await sts.policy("secure.test") is None


async def test_concurrent_callers_share_one_fetch(
    sts: MtaSts, https: PolicyServer
) -> None:
    https.delay = 0.05
    policies = await asyncio.gather(*(sts.policy("secure.test") for _ in range(5)))
    assert len(set(policies)) == 1
    assert https.requests["mta-sts.secure.test"] == 1


# Fetch failures.


@pytest.mark.parametrize(
    "response",
    [
        http(b"", status="404 Not Found"),
        http(b"", status="500 Internal Server Error"),
        b"HTTP/1.1 301 Moved\r\nLocation: https://elsewhere.test/\r\n\r\n",
        http(ENFORCE_POLICY, media="text/html"),
        http(b"version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 1\n"),
        http(b"version: STSv1\nmode: enforce\nmax_age: 86400\n"),
        http(b"x" * (64 * 1024 + 1)),
        http(b"x" * (64 * 1024 + 1), chunked=True),
        b"garbage\r\n\r\n",
        b"",
    ],
    ids=[
        "404",
        "500",
        "redirect",
        "html",
        "version",
        "no-mx",
        "too-large",
        "too-large-chunked",
        "garbage",
        "hang-up",
    ],
)
async def test_fetch_failure_means_no_policy(
    sts: MtaSts, https: PolicyServer, response: bytes
) -> None:
    https.responses["mta-sts.secure.test"] = response
    assert await sts.policy("secure.test") is None
    assert https.requests["mta-sts.secure.test"] == 1


async def test_chunked_policy(sts: MtaSts, https: PolicyServer) -> None:
    https.responses["mta-sts.secure.test"] = http(ENFORCE_POLICY, chunked=True)
    policy = await sts.policy("secure.test")
    assert policy is not None and policy.mode == "enforce"


async def test_untrusted_certificate_means_no_policy(
    router: Router, https: PolicyServer, clock: FakeClock
) -> None:
    sts = MtaSts(
        router.resolver,
        https_port=https.port,
        allowed_networks=["127.0.0.0/8"],
        timeout=2.0,
        clock=clock.time,
    )
    assert await sts.policy("secure.test") is None


async def test_certificate_must_name_the_policy_host(
    sts: MtaSts, dns: TestDnsServer, https: PolicyServer
) -> None:
    dns.set("_mta-sts.other.test", "TXT", ["v=STSv1; id=1"])
    dns.set("mta-sts.other.test", "A", ["127.0.0.1"])
    https.responses["mta-sts.other.test"] = http(ENFORCE_POLICY)
    assert await sts.policy("other.test") is None
    assert not https.requests  # the handshake failed before any request


async def test_policy_host_outside_allowed_networks(
    router: Router, https: PolicyServer, pki: Pki, clock: FakeClock
) -> None:
    sts = MtaSts(
        router.resolver, https_port=https.port, ca_file=str(pki.ca), clock=clock.time
    )
    assert await sts.policy("secure.test") is None
    assert not https.requests


async def test_unreachable_policy_host(sts: MtaSts, dns: TestDnsServer) -> None:
    dns.set("mta-sts.secure.test", "A", ["127.0.0.254"])  # nothing listens
    assert await sts.policy("secure.test") is None
    dns.delete("mta-sts.secure.test")
    assert await sts.policy("testing.test") is not None  # others unaffected


async def test_slow_policy_server_times_out(
    router: Router, https: PolicyServer, pki: Pki, clock: FakeClock
) -> None:
    https.delay = 5
    sts = MtaSts(
        router.resolver,
        https_port=https.port,
        ca_file=str(pki.ca),
        allowed_networks=["127.0.0.0/8"],
        timeout=0.3,
        clock=clock.time,
    )
    assert await sts.policy("secure.test") is None


async def test_failed_fetch_keeps_the_cached_policy_and_waits_to_retry(
    sts: MtaSts, https: PolicyServer, dns: TestDnsServer, clock: FakeClock
) -> None:
    old = await sts.policy("secure.test")
    dns.set("_mta-sts.secure.test", "TXT", ["v=STSv1; id=2"])
    https.responses["mta-sts.secure.test"] = http(b"", status="503 Busy")
    clock.advance(301)

    assert await sts.policy("secure.test") == old
    assert await sts.policy("secure.test") == old
    assert https.requests["mta-sts.secure.test"] == 2  # one failure, no more

    https.responses["mta-sts.secure.test"] = http(policy_file("none"))
    clock.advance(sts.retry_after)
    new = await sts.policy("secure.test")
    assert new is not None and (new.id, new.mode) == ("2", "none")


# Parsing.


@pytest.mark.parametrize(
    ("records", "policy_id"),
    [
        (["v=STSv1; id=20160831085700Z"], "20160831085700Z"),
        (["v=STSv1;id=abc;"], "abc"),
        (["v=STSv1 ; id=abc ; ext=1"], "abc"),
        (["v=spf1 -all", "v=STSv1; id=1"], "1"),
        (["v=STSv1; id=1", "v=STSv1; id=2"], None),
        (["v=STSv1"], None),
        (["v=STSv1; id=not-alnum"], None),
        (["v=STSv1; id=" + "a" * 33], None),
        (["v=STSv10; id=1"], None),
        ([], None),
    ],
)
def test_parse_record(records: list[str], policy_id: str | None) -> None:
    assert mtasts.parse_record(records) == policy_id


def test_parse_policy() -> None:
    body = (
        b"version: STSv1\n"
        b"mode: enforce\n"
        b"mx: MX1.Example.TEST.\n"
        b"mx: *.backup.example.test\n"
        b"future: ignored\n"
        b"max_age: 9999999999\n"
    )
    assert mtasts.parse_policy(body, "7") == Policy(
        "7", "enforce", ("mx1.example.test", "*.backup.example.test"), 31557600
    )


@pytest.mark.parametrize(
    "body",
    [
        b"mode: enforce\nmx: a.test\nmax_age: 1\n",
        b"version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n",
        b"version: STSv1\nmode: testing\nmax_age: 1\n",
        b"version: STSv1\nmode: none\nmax_age: -1\n",
        b"version: STSv1\nmode: none\n",
        b"version: STSv1\nmode: none\nmax_age: 1\n\xff",
    ],
)
def test_parse_policy_rejects(body: bytes) -> None:
    with pytest.raises(PolicyError):
        mtasts.parse_policy(body, "1")


@pytest.mark.parametrize(
    ("host", "matches"),
    [
        ("mx.example.test", True),
        ("MX.Example.Test.", True),
        ("a.backup.example.test", True),
        ("b.a.backup.example.test", False),
        ("backup.example.test", False),
        ("other.example.test", False),
        ("xmx.example.test", False),
    ],
)
def test_mx_patterns(host: str, matches: bool) -> None:
    policy = Policy("1", "enforce", ("mx.example.test", "*.backup.example.test"), 60)
    assert policy.matches(host) is matches
