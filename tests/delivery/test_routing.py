"""Router: MX, implicit MX, null MX, DNS failures, IDNA, the cache, static
routes, the smarthost and local domains, all against TestDnsServer.

Time in the DNS cache is a FakeClock; the server counts the queries
it receives, so a cache hit is a query that did not arrive.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterator

import pytest

from postroom.config import DeliveryConfig, DestinationPolicy
from postroom.delivery import routing
from postroom.delivery.outcome import LOCAL, SMTP, DeliveryError, Route, Target
from postroom.delivery.routing import Router
from postroom.errors import ConfigError
from postroom.testing.clock import FakeClock
from postroom.testing.dns import Records, TestDnsServer

RECORDS: Records = {
    "gmail.test": {
        "MX": [(20, "mx2.gmail.test"), (10, "mx1.gmail.test"), (30, "mx3.gmail.test")],
        "ttl": 60,
    },
    "mx1.gmail.test": {"A": ["127.0.0.2"], "AAAA": ["::1"]},
    "mx2.gmail.test": {"A": ["127.0.0.3"]},
    "mx3.gmail.test": {"AAAA": ["::3"]},
    "equal.test": {
        "MX": [(10, "a.equal.test"), (10, "b.equal.test"), (20, "c.equal.test")]
    },
    "a.equal.test": {"A": ["127.0.1.1"]},
    "b.equal.test": {"A": ["127.0.1.2"]},
    "c.equal.test": {"A": ["127.0.1.3"]},
    "plain.test": {"A": ["127.0.0.5"], "AAAA": ["::5"]},
    "noaddress.test": {"TXT": ["v=spf1 -all"]},
    "null.test": {"MX": [(0, ".")]},
    "halfnull.test": {"MX": [(0, "."), (10, "mx1.gmail.test")]},
    "broken.test": {"servfail": True},
    "slow.test": {"timeout": True},
    "ghosts.test": {"MX": [(10, "gone1.ghosts.test"), (20, "gone2.ghosts.test")]},
    "flaky.test": {"MX": [(10, "gone.flaky.test"), (20, "sick.flaky.test")]},
    "sick.flaky.test": {"servfail": True},
    "partial.test": {"MX": [(10, "gone.partial.test"), (20, "mx2.gmail.test")]},
    "shared.test": {"MX": [(10, "one.shared.test"), (20, "two.shared.test")]},
    "one.shared.test": {"A": ["127.0.2.1"]},
    "two.shared.test": {"A": ["127.0.2.1", "127.0.2.2"]},
    "literal.test": {"MX": [(10, "127.0.0.9")]},
    "alias.test": {"MX": [(10, "mail.alias.test")]},
    "mail.alias.test": {"CNAME": "mx1.gmail.test"},
    "loop.test": {"MX": [(10, "l1.loop.test")]},
    "l1.loop.test": {"CNAME": "l2.loop.test"},
    "l2.loop.test": {"CNAME": "l1.loop.test"},
    "xn--bcher-kva.test": {"MX": [(10, "mx2.gmail.test")]},
    "relay.test": {"A": ["127.0.3.1"], "AAAA": ["::31"]},
    "smart.test": {"A": ["127.0.3.2"]},
}


@pytest.fixture(scope="module")
def dns_server() -> Iterator[TestDnsServer]:
    with TestDnsServer(RECORDS, negative_ttl=30) as server:
        yield server


@pytest.fixture
def server(dns_server: TestDnsServer) -> Iterator[TestDnsServer]:
    # One server for the module (starting one per test costs little, but
    # adds up); each test starts with no counts and leaves the data as
    # it found it.
    dns_server.load(RECORDS)
    dns_server.reset_queries()
    yield dns_server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


MakeRouter = Callable[..., Router]


@pytest.fixture
def make_router(server: TestDnsServer, clock: FakeClock) -> MakeRouter:
    def make(
        *, local_domains: tuple[str, ...] = (), seed: int = 1, **settings: object
    ) -> Router:
        config = DeliveryConfig(nameservers=[server.address], dns_timeout=0.5)
        for key, value in settings.items():
            setattr(config, key, value)
        return Router(
            config,
            local_domains=local_domains,
            clock=clock.time,
            rng=random.Random(seed),
        )

    return make


async def fail(router: Router, domain: str) -> DeliveryError:
    with pytest.raises(DeliveryError) as info:
        await router.route(domain)
    return info.value


# MX records.


async def test_mx_hosts_by_preference_then_a_before_aaaa(
    make_router: MakeRouter,
) -> None:
    route = await make_router().route("gmail.test")
    assert route == Route(
        "gmail.test",
        SMTP,
        (
            Target("mx1.gmail.test", 25, ("127.0.0.2", "::1")),
            Target("mx2.gmail.test", 25, ("127.0.0.3",)),
            Target("mx3.gmail.test", 25, ("::3",)),
        ),
        tls="opportunistic",
        mx=True,
        dns=True,
    )


async def test_equal_preferences_are_shuffled(make_router: MakeRouter) -> None:
    orders = set()
    for seed in range(20):
        route = await make_router(seed=seed).route("equal.test")
        hosts = tuple(t.host for t in route.targets)
        assert hosts[2] == "c.equal.test"  # preference still rules
        orders.add(hosts[:2])
    assert orders == {
        ("a.equal.test", "b.equal.test"),
        ("b.equal.test", "a.equal.test"),
    }


async def test_same_seed_same_order(make_router: MakeRouter) -> None:
    first = await make_router(seed=5).route("equal.test")
    second = await make_router(seed=5).route("equal.test")
    assert first.targets == second.targets


async def test_mx_host_without_address_is_skipped(make_router: MakeRouter) -> None:
    route = await make_router().route("partial.test")
    assert [t.host for t in route.targets] == ["mx2.gmail.test"]


async def test_an_address_is_tried_once(make_router: MakeRouter) -> None:
    route = await make_router().route("shared.test")
    assert route.targets == (
        Target("one.shared.test", 25, ("127.0.2.1",)),
        Target("two.shared.test", 25, ("127.0.2.2",)),
    )


async def test_mx_pointing_at_ip_literal_is_tolerated(
    make_router: MakeRouter, server: TestDnsServer
) -> None:
    route = await make_router().route("literal.test")
    assert route.targets == (Target("127.0.0.9", 25, ("127.0.0.9",)),)
    assert server.queries("127.0.0.9") == 0


async def test_mx_pointing_at_cname_is_followed(make_router: MakeRouter) -> None:
    route = await make_router().route("alias.test")
    assert route.targets == (Target("mail.alias.test", 25, ("127.0.0.2", "::1")),)


async def test_cname_loop_defers_and_ends(make_router: MakeRouter) -> None:
    error = await fail(make_router(), "loop.test")
    assert (error.reply.code, error.reply.enhanced) == (451, "4.4.3")


# No MX, null MX, no such domain.


async def test_implicit_mx(make_router: MakeRouter) -> None:
    route = await make_router().route("plain.test")
    assert route.targets == (Target("plain.test", 25, ("127.0.0.5", "::5")),)
    assert route.mx is False


async def test_no_mx_and_no_address_bounces(make_router: MakeRouter) -> None:
    error = await fail(make_router(), "noaddress.test")
    assert error.permanent
    assert error.reply.enhanced == "5.4.4"


async def test_null_mx_bounces(make_router: MakeRouter, server: TestDnsServer) -> None:
    error = await fail(make_router(), "null.test")
    assert (error.reply.code, error.reply.enhanced) == (556, "5.1.10")
    assert "null MX" in error.reply.text
    # RFC 7505: no fallback to the domain's address records.
    assert server.queries("null.test", "A") == 0


async def test_root_mx_beside_real_ones_is_skipped(make_router: MakeRouter) -> None:
    route = await make_router().route("halfnull.test")
    assert [t.host for t in route.targets] == ["mx1.gmail.test"]


async def test_nxdomain_bounces(make_router: MakeRouter) -> None:
    error = await fail(make_router(), "nothing.test")
    assert error.permanent
    assert (error.reply.code, error.reply.enhanced) == (550, "5.1.2")
    assert "does not exist" in error.reply.text


async def test_all_mx_hosts_nxdomain_bounces(make_router: MakeRouter) -> None:
    error = await fail(make_router(), "ghosts.test")
    assert error.permanent
    assert error.reply.enhanced == "5.4.4"


async def test_mx_hosts_none_resolved_but_one_failed_defers(
    make_router: MakeRouter,
) -> None:
    error = await fail(make_router(), "flaky.test")
    assert not error.permanent
    assert error.reply.enhanced == "4.4.3"


async def test_servfail_defers(make_router: MakeRouter) -> None:
    error = await fail(make_router(), "broken.test")
    assert (error.reply.code, error.reply.enhanced) == (451, "4.4.3")
    assert "SERVFAIL" in error.reply.text


async def test_timeout_defers_in_bounded_time(make_router: MakeRouter) -> None:
    started = time.monotonic()
    error = await fail(make_router(), "slow.test")
    assert time.monotonic() - started < 2
    assert error.reply.enhanced == "4.4.3"
    assert "timeout" in error.reply.text


async def test_invalid_domain_bounces_without_a_query(
    make_router: MakeRouter, server: TestDnsServer
) -> None:
    for domain in ("a..test", "x" * 64 + ".test"):
        error = await fail(make_router(), domain)
        assert error.reply.enhanced == "5.1.2"
    assert server.query_log == []


async def test_address_literal(make_router: MakeRouter) -> None:
    route = await make_router().route("[127.0.0.8]")
    assert route.targets == (Target("127.0.0.8", 25, ("127.0.0.8",)),)
    route = await make_router().route("[IPv6:::1]")
    assert route.targets == (Target("::1", 25, ("::1",)),)
    error = await fail(make_router(), "[not-an-ip]")
    assert error.reply.enhanced == "5.1.2"


# IDNA.


@pytest.mark.parametrize(
    ("domain", "key"),
    [
        ("Gmail.TEST.", "gmail.test"),
        ("bücher.test", "xn--bcher-kva.test"),
        ("BÜCHER.test", "xn--bcher-kva.test"),
        ("xn--bcher-kva.test", "xn--bcher-kva.test"),
        ("[127.0.0.1]", "[127.0.0.1]"),
    ],
)
def test_destination(make_router: MakeRouter, domain: str, key: str) -> None:
    assert make_router().destination(domain) == key
    assert routing.destination(domain) == key


async def test_utf8_domain_is_looked_up_as_a_label(
    make_router: MakeRouter, server: TestDnsServer
) -> None:
    route = await make_router().route("Bücher.test")
    assert route.destination == "xn--bcher-kva.test"
    assert [t.host for t in route.targets] == ["mx2.gmail.test"]
    assert server.query_log[0] == ("xn--bcher-kva.test", "MX")


# The cache.


async def test_answers_are_cached_for_their_ttl(
    make_router: MakeRouter, server: TestDnsServer, clock: FakeClock
) -> None:
    router = make_router()
    first = await router.route("gmail.test")
    assert await router.route("gmail.test") == first
    assert server.queries("gmail.test", "MX") == 1
    assert server.queries("mx1.gmail.test", "A") == 1

    # The MX set says 60 s, the host addresses the default 300 s.
    clock.advance(61)
    await router.route("gmail.test")
    assert server.queries("gmail.test", "MX") == 2
    assert server.queries("mx1.gmail.test", "A") == 1

    clock.advance(300)
    await router.route("gmail.test")
    assert server.queries("mx1.gmail.test", "A") == 2


async def test_changed_records_show_after_the_ttl(
    make_router: MakeRouter, server: TestDnsServer, clock: FakeClock
) -> None:
    router = make_router()
    await router.route("gmail.test")
    server.set("gmail.test", "MX", [(5, "mx2.gmail.test")], ttl=60)

    assert len((await router.route("gmail.test")).targets) == 3
    clock.advance(60)
    route = await router.route("gmail.test")
    assert [t.host for t in route.targets] == ["mx2.gmail.test"]


async def test_negative_answers_cached_by_soa_minimum(
    make_router: MakeRouter, server: TestDnsServer, clock: FakeClock
) -> None:
    router = make_router()
    await fail(router, "nothing.test")
    await fail(router, "nothing.test")
    assert server.queries("nothing.test", "MX") == 1

    clock.advance(31)  # the server's SOA minimum is 30
    await fail(router, "nothing.test")
    assert server.queries("nothing.test", "MX") == 2


async def test_failures_are_not_cached(
    make_router: MakeRouter, server: TestDnsServer
) -> None:
    router = make_router()
    server.servfail("gmail.test")
    await fail(router, "gmail.test")
    await fail(router, "gmail.test")
    assert server.queries("gmail.test", "MX") == 2

    server.heal("gmail.test")
    assert (await router.route("gmail.test")).mx


async def test_concurrent_lookups_share_one_query(
    make_router: MakeRouter, server: TestDnsServer
) -> None:
    router = make_router()
    routes = await asyncio.gather(*(router.route("gmail.test") for _ in range(5)))
    assert len(set(routes)) == 1
    assert server.queries("gmail.test", "MX") == 1


# Static routes, the smarthost, local domains.


ROUTES = {
    "gmail.test": "relay.test:2525",
    ".corp.test": "[127.0.4.1]:587, relay.test",
    "inside.test": "local",
    "*": "[smart.test]",
}


async def test_static_route_exact(
    make_router: MakeRouter, server: TestDnsServer
) -> None:
    route = await make_router(routes=ROUTES).route("gmail.test")
    assert route == Route(
        "gmail.test", SMTP, (Target("relay.test", 2525, ("127.0.3.1", "::31")),)
    )
    # A route's host is an A/AAAA name, never an MX lookup.
    assert server.queries("gmail.test", "MX") == 0
    assert server.queries("relay.test", "MX") == 0


async def test_static_route_for_subdomains(
    make_router: MakeRouter, server: TestDnsServer
) -> None:
    router = make_router(routes=ROUTES)
    for domain in ("a.corp.test", "b.a.corp.test"):
        route = await router.route(domain)
        assert route.targets == (
            Target("127.0.4.1", 587, ("127.0.4.1",)),
            Target("relay.test", 25, ("127.0.3.1", "::31")),
        )
        assert route.mx is False
    # An IP literal is used as it is.
    assert server.queries("127.0.4.1") == 0


async def test_parent_pattern_does_not_match_the_parent(
    make_router: MakeRouter,
) -> None:
    route = await make_router(routes=ROUTES).route("corp.test")
    assert route.targets == (Target("smart.test", 25, ("127.0.3.2",)),)


async def test_static_route_wildcard_and_local(make_router: MakeRouter) -> None:
    router = make_router(routes=ROUTES)
    assert (await router.route("anything.test")).targets == (
        Target("smart.test", 25, ("127.0.3.2",)),
    )
    assert await router.route("Inside.test") == Route("inside.test", LOCAL)


async def test_static_route_that_resolves_to_nothing_defers(
    make_router: MakeRouter,
) -> None:
    router = make_router(routes={"gmail.test": "nowhere.test:25"})
    error = await fail(router, "gmail.test")
    assert not error.permanent
    assert error.reply.enhanced == "4.4.3"
    assert "nowhere" not in error.reply.text  # configuration stays in the log


@pytest.mark.parametrize(
    "route",
    ["", "relay.test:port", "relay.test:70000", "[relay.test]x", ":25"],
)
def test_malformed_static_route(make_router: MakeRouter, route: str) -> None:
    with pytest.raises(ConfigError, match=r"delivery\.routes\.gmail\.test"):
        make_router(routes={"gmail.test": route})


@pytest.mark.parametrize(
    ("text", "hosts"),
    [
        ("relay.test", (("relay.test", 25),)),
        ("Relay.Test:2525", (("relay.test", 2525),)),
        ("[relay.test]:26", (("relay.test", 26),)),
        ("[relay.test]", (("relay.test", 25),)),
        ("192.0.2.1:26, ::1", (("192.0.2.1", 26), ("::1", 25))),
        ("[2001:db8::1]:2525", (("2001:db8::1", 2525),)),
    ],
)
def test_parse_hosts(text: str, hosts: routing.Hosts) -> None:
    assert routing.parse_hosts("x", text) == hosts


async def test_smarthost_with_auth(make_router: MakeRouter) -> None:
    router = make_router(
        smarthost="smart.test:587",
        smarthost_user="alice",
        smarthost_password="secret",
        local_domains=("local.test",),
    )
    route = await router.route("gmail.test")
    assert route == Route(
        "gmail.test",
        SMTP,
        (Target("smart.test", 587, ("127.0.3.2",)),),
        auth=("alice", "secret"),
    )
    assert await router.route("LOCAL.test.") == Route("local.test", LOCAL)


async def test_smarthost_without_user_has_no_auth(make_router: MakeRouter) -> None:
    route = await make_router(smarthost="127.0.3.9:2525").route("gmail.test")
    assert route.auth is None
    assert route.targets == (Target("127.0.3.9", 2525, ("127.0.3.9",)),)


async def test_static_route_wins_over_smarthost(make_router: MakeRouter) -> None:
    router = make_router(routes={"gmail.test": "relay.test"}, smarthost="smart.test:25")
    assert (await router.route("gmail.test")).targets[0].host == "relay.test"
    assert (await router.route("other.test")).targets[0].host == "smart.test"


async def test_local_domains_skip_the_dns(
    make_router: MakeRouter, server: TestDnsServer
) -> None:
    router = make_router(local_domains=("Bücher.test", "local.test"))
    assert await router.route("bücher.test") == Route("xn--bcher-kva.test", LOCAL)
    assert await router.route("local.test") == Route("local.test", LOCAL)
    assert server.query_log == []


# TLS policy and the secure hook.


async def test_tls_policy_per_destination(make_router: MakeRouter) -> None:
    router = make_router(
        tls="required",
        destinations={"gmail.test": DestinationPolicy(tls="verify")},
    )
    assert (await router.route("gmail.test")).tls == "verify"
    assert (await router.route("plain.test")).tls == "required"


async def test_secure_hook_sees_dns_routes_only(make_router: MakeRouter) -> None:
    seen: list[str] = []

    async def secure(route: Route) -> Route:
        seen.append(route.destination)
        return Route(route.destination, SMTP, route.targets[:1], tls="verify")

    router = make_router(routes={"relay.test": "relay.test"})
    router.secure = secure
    route = await router.route("gmail.test")
    assert (route.tls, len(route.targets)) == ("verify", 1)
    await router.route("relay.test")
    assert seen == ["gmail.test"]


def test_nameserver_forms() -> None:
    forms = {
        "127.0.0.1": ("127.0.0.1", 53),
        "127.0.0.1:5353": ("127.0.0.1", 5353),
        "::1": ("::1", 53),
        "[::1]:5353": ("::1", 5353),
    }
    for text, (address, port) in forms.items():
        server = routing.parse_nameserver(text)
        assert (server.address, server.port) == (address, port)
