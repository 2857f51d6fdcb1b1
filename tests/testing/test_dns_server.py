"""TestDnsServer: what it answers, over UDP and TCP, and how tests steer it.

Queries go out with dnspython's low-level ``dns.query`` so that every
test sees the raw answer (rcode, flags, sections) the server produced;
the resolver's view of the same answers is tested with the router.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.nameserver
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from postroom.testing.dns import Records, TestDnsServer

RECORDS: Records = {
    "gmail.test": {"MX": [(10, "mx1.gmail.test"), (20, "mx2.gmail.test")], "ttl": 60},
    "mx1.gmail.test": {"A": ["127.0.0.2"], "AAAA": ["::1"]},
    "null.test": {"MX": [(0, ".")]},
    "_mta-sts.secure.test": {"TXT": ["v=STSv1; id=1"]},
    "www.gmail.test": {"CNAME": "gmail.test"},
    "loop1.test": {"CNAME": "loop2.test"},
    "loop2.test": {"CNAME": "loop1.test"},
    "broken.test": {"servfail": True},
    "slow.test": {"timeout": ["MX"]},
    "a.b.deep.test": {"A": ["127.0.0.9"]},
}


@pytest.fixture
def server() -> Iterator[TestDnsServer]:
    with TestDnsServer(RECORDS, negative_ttl=30) as dns_server:
        yield dns_server


def ask(
    server: TestDnsServer, name: str, rdtype: str, *, tcp: bool = False
) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    if tcp:
        return dns.query.tcp(query, server.host, port=server.port, timeout=2)
    return dns.query.udp(query, server.host, port=server.port, timeout=2)


def texts(response: dns.message.Message) -> list[str]:
    return [rr.to_text() for rrset in response.answer for rr in rrset]


def test_address_is_loopback_and_port(server: TestDnsServer) -> None:
    assert server.port > 0
    assert server.address == f"127.0.0.1:{server.port}"


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_answers_records(server: TestDnsServer, tcp: bool) -> None:
    mx = ask(server, "gmail.test", "MX", tcp=tcp)
    assert mx.rcode() == dns.rcode.NOERROR
    assert mx.flags & dns.flags.AA
    assert texts(mx) == ["10 mx1.gmail.test.", "20 mx2.gmail.test."]
    assert mx.answer[0].ttl == 60

    assert texts(ask(server, "MX1.Gmail.Test.", "A", tcp=tcp)) == ["127.0.0.2"]
    assert texts(ask(server, "mx1.gmail.test", "AAAA", tcp=tcp)) == ["::1"]
    assert texts(ask(server, "_mta-sts.secure.test", "TXT", tcp=tcp)) == [
        '"v=STSv1; id=1"'
    ]


def test_default_ttl(server: TestDnsServer) -> None:
    assert ask(server, "mx1.gmail.test", "A").answer[0].ttl == 300


def test_null_mx(server: TestDnsServer) -> None:
    (rrset,) = ask(server, "null.test", "MX").answer
    assert rrset[0].preference == 0
    assert rrset[0].exchange == dns.name.root


def test_unknown_name_is_nxdomain_with_soa(server: TestDnsServer) -> None:
    response = ask(server, "nothing.test", "MX")
    assert response.rcode() == dns.rcode.NXDOMAIN
    (soa,) = response.authority
    assert soa.rdtype == dns.rdatatype.SOA
    assert soa[0].minimum == 30


def test_missing_type_is_nodata(server: TestDnsServer) -> None:
    response = ask(server, "gmail.test", "A")
    assert response.rcode() == dns.rcode.NOERROR
    assert response.answer == []
    assert response.authority[0].rdtype == dns.rdatatype.SOA


def test_empty_non_terminal_is_nodata(server: TestDnsServer) -> None:
    assert ask(server, "b.deep.test", "A").rcode() == dns.rcode.NOERROR


def test_outside_our_zones_is_refused(server: TestDnsServer) -> None:
    assert ask(server, "example.com", "A").rcode() == dns.rcode.REFUSED


def test_extra_zone() -> None:
    with TestDnsServer({}, zones=["example"]) as server:
        assert ask(server, "a.example", "A").rcode() == dns.rcode.NXDOMAIN


def test_cname_is_followed(server: TestDnsServer) -> None:
    response = ask(server, "www.gmail.test", "MX")
    assert texts(response) == [
        "gmail.test.",
        "10 mx1.gmail.test.",
        "20 mx2.gmail.test.",
    ]


def test_cname_loop_ends(server: TestDnsServer) -> None:
    response = ask(server, "loop1.test", "A")
    assert response.rcode() == dns.rcode.NOERROR
    assert all(rrset.rdtype == dns.rdatatype.CNAME for rrset in response.answer)


def test_servfail(server: TestDnsServer) -> None:
    assert ask(server, "broken.test", "A").rcode() == dns.rcode.SERVFAIL
    assert ask(server, "broken.test", "MX").rcode() == dns.rcode.SERVFAIL


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_timeout_answers_nothing(server: TestDnsServer, tcp: bool) -> None:
    query = dns.message.make_query("slow.test", "MX")
    with pytest.raises(dns.exception.Timeout):
        if tcp:
            dns.query.tcp(query, server.host, port=server.port, timeout=0.3)
        else:
            dns.query.udp(query, server.host, port=server.port, timeout=0.3)
    # Only the types named time out.
    assert ask(server, "slow.test", "A").rcode() == dns.rcode.NXDOMAIN


def test_failures_set_and_healed_while_running(server: TestDnsServer) -> None:
    server.servfail("gmail.test", "MX")
    assert ask(server, "gmail.test", "MX").rcode() == dns.rcode.SERVFAIL
    assert ask(server, "gmail.test", "TXT").rcode() == dns.rcode.NOERROR
    server.heal("gmail.test")
    assert ask(server, "gmail.test", "MX").rcode() == dns.rcode.NOERROR

    server.timeout("mx1.gmail.test")
    with pytest.raises(dns.exception.Timeout):
        dns.query.udp(
            dns.message.make_query("mx1.gmail.test", "A"),
            server.host,
            port=server.port,
            timeout=0.3,
        )


def test_records_change_while_running(server: TestDnsServer) -> None:
    server.set("new.test", "A", ["127.0.0.7"], ttl=5)
    (rrset,) = ask(server, "new.test", "A").answer
    assert (rrset[0].address, rrset.ttl) == ("127.0.0.7", 5)

    server.set("gmail.test", "MX", [(5, "mx9.gmail.test")])
    assert texts(ask(server, "gmail.test", "MX")) == ["5 mx9.gmail.test."]

    server.delete("gmail.test", "MX")
    assert ask(server, "gmail.test", "MX").answer == []
    server.delete("new.test")
    assert ask(server, "new.test", "A").rcode() == dns.rcode.NXDOMAIN


def test_long_txt_is_truncated_over_udp_and_whole_over_tcp(
    server: TestDnsServer,
) -> None:
    long = "v=spf1 " + "ip4:127.0.0.1 " * 60
    server.set("long.test", "TXT", [long])

    udp = ask(server, "long.test", "TXT")
    assert udp.flags & dns.flags.TC
    assert udp.answer == []

    (rrset,) = ask(server, "long.test", "TXT", tcp=True).answer
    # Split into 255-byte strings on the wire, whole once joined.
    assert all(len(s) <= 255 for s in rrset[0].strings)
    assert b"".join(rrset[0].strings).decode() == long


def test_counts_queries_per_name_and_type(server: TestDnsServer) -> None:
    ask(server, "gmail.test", "MX")
    ask(server, "GMAIL.test.", "MX")
    ask(server, "gmail.test", "A")
    ask(server, "nothing.test", "A")
    with pytest.raises(dns.exception.Timeout):
        dns.query.udp(
            dns.message.make_query("slow.test", "MX"),
            server.host,
            port=server.port,
            timeout=0.2,
        )

    assert server.queries("gmail.test", "MX") == 2
    assert server.queries("gmail.test") == 3
    assert server.queries("nothing.test", "A") == 1
    assert server.queries("slow.test", "mx") == 1
    assert server.query_log[:3] == [
        ("gmail.test", "MX"),
        ("gmail.test", "MX"),
        ("gmail.test", "A"),
    ]

    server.reset_queries()
    assert server.queries("gmail.test") == 0
    assert server.query_log == []


def test_malformed_query_is_ignored(server: TestDnsServer) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.3)
        sock.sendto(b"\x00\x01garbage", (server.host, server.port))
        with pytest.raises(TimeoutError):
            sock.recv(512)
    # And the server still answers.
    assert ask(server, "gmail.test", "MX").rcode() == dns.rcode.NOERROR


def test_stops_cleanly() -> None:
    before = threading.active_count()
    server = TestDnsServer(RECORDS).start()
    port = server.port
    ask(server, "gmail.test", "MX", tcp=True)
    server.stop()
    server.stop()  # twice is harmless

    assert threading.active_count() <= before
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock,
        pytest.raises(ConnectionRefusedError),
    ):
        sock.connect(("127.0.0.1", port))


async def test_serves_the_async_resolver(server: TestDnsServer) -> None:
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [dns.nameserver.Do53Nameserver(server.host, server.port)]
    answer = await resolver.resolve("gmail.test", "MX", search=False)
    assert sorted(r.preference for r in answer) == [10, 20]
