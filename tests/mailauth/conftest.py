"""Fixtures for the mail authentication tests: one authoritative DNS
server on loopback per module, answering ``postroom.testing.mailauth``'s
records (and whatever a test adds), and a resolver pointed at it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from postroom.delivery.routing import Resolver
from postroom.testing.dns import TestDnsServer
from postroom.testing.mailauth import DNS_TIMEOUT, RECORDS


@pytest.fixture(scope="module")
def dns_server() -> Iterator[TestDnsServer]:
    with TestDnsServer(RECORDS) as server:
        yield server


@pytest.fixture
def dns(dns_server: TestDnsServer) -> Iterator[TestDnsServer]:
    """The module's server with its records as ``RECORDS`` says and no
    queries counted, again after the test (which may add keys or break
    names)."""
    dns_server.load(RECORDS)
    dns_server.reset_queries()
    yield dns_server
    dns_server.load(RECORDS)


@pytest.fixture
def resolver(dns: TestDnsServer) -> Resolver:
    """A fresh resolver (empty cache) asking only the test server."""
    return Resolver([dns.address], DNS_TIMEOUT)
