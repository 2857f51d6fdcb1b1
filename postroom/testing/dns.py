"""A small authoritative DNS server on loopback, for tests.

Delivery resolves everything through its own resolver pointed at the
nameservers of the configuration, so a test points it here instead of
the real DNS: ``TestDnsServer`` answers from a plain Python mapping over
UDP and TCP on ``127.0.0.1`` and a free port. dnslib does the wire
format; the serving is two ``socketserver`` threads, written here rather
than taken from ``dnslib.server.DNSServer`` because a test also needs to
make a name time out (no answer at all), which that class cannot do.

Records
-------
One entry per owner name; keys are record types, plus three options::

    {
        "gmail.test": {"MX": [(10, "mx1.gmail.test")], "ttl": 60},
        "mx1.gmail.test": {"A": ["127.0.0.2"], "AAAA": ["::1"]},
        "null.test": {"MX": [(0, ".")]},
        "_mta-sts.secure.test": {"TXT": ["v=STSv1; id=1"]},
        "www.gmail.test": {"CNAME": "gmail.test"},
        "broken.test": {"servfail": True},
        "slow.test": {"timeout": ["MX"]},
    }

Types: A, AAAA, MX (preference, exchange), TXT (one string per record,
split into 255-byte strings on the wire), CNAME (one target), PTR, NS.
``ttl`` (seconds) applies to the name's records, else the server's
``ttl``. ``servfail`` and ``timeout`` are True for every type or a list
of types: the server answers SERVFAIL, or nothing at all.

Answers
-------
The server is authoritative for every zone that is the last label of a
configured name (``test`` above) and for those given as ``zones``; it
answers REFUSED outside them. Inside, an unknown name is NXDOMAIN, and
a known name without the asked type is NOERROR with no answer (NODATA);
both carry the zone's SOA, whose minimum is ``negative_ttl`` (RFC 2308),
so a resolver can cache them. CNAMEs are followed inside our data, at
most eight deep, so a CNAME loop ends instead of looping.

Steering a running server: ``set``, ``delete`` and ``load`` change
the records (a TTL-cache test changes a record and moves its clock);
``servfail``, ``timeout`` and ``heal`` turn failures on and off; and
``queries(name, type)`` counts what arrived, answered or not, so a test
proves a cache hit by the query that never came.

Names are compared in lower case without a trailing dot, everywhere:
in the records, in the methods and in the query counts.

Threads: the servers answer from their own threads, and every public
method may be called from any thread while they run.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import socketserver
import struct
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

import dnslib
from dnslib import QTYPE, RCODE, RR, DNSRecord

LOOPBACK = "127.0.0.1"
Records = Mapping[str, Mapping[str, Any]]

# Options in a name's entry that are not record types.
_OPTIONS = ("ttl", "servfail", "timeout")
_MAX_CHAIN = 8
# Plain DNS over UDP without EDNS carries at most 512 bytes (RFC 1035
# §4.2.1); a longer answer is truncated so the client retries over TCP.
_UDP_LIMIT = 512


def normalize(name: str) -> str:
    """The form names take in the records and the counts."""
    return name.strip().rstrip(".").lower()


class TestDnsServer:
    """An authoritative DNS server on loopback for *records*.

    Use as a context manager or call ``start()`` and ``stop()``. After
    start, ``port`` is the UDP and TCP port and ``address`` is
    ``"127.0.0.1:PORT"``, the form ``DeliveryConfig.nameservers`` takes.
    """

    # Not a test class, whatever its name says to pytest.
    __test__ = False

    def __init__(
        self,
        records: Records | None = None,
        *,
        ttl: int = 300,
        negative_ttl: int = 60,
        zones: Iterable[str] = (),
        host: str = LOOPBACK,
    ) -> None:
        self.host = host
        self.port = 0
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self._lock = threading.Lock()
        self._records: dict[str, dict[str, Any]] = {}
        self._zones = {normalize(z) for z in zones}
        self._counts: Counter[tuple[str, str]] = Counter()
        self._log: list[tuple[str, str]] = []
        self._servers: list[socketserver.BaseServer] = []
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self.load(records or {})

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # Life.

    def start(self) -> TestDnsServer:
        """Bind UDP and TCP on one free port and serve from threads."""
        self._stopping.clear()
        udp, tcp = self._bind()
        self._servers = [udp, tcp]
        for server in self._servers:
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"test-dns-{self.port}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop serving and close both sockets; safe to call twice."""
        self._stopping.set()
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers = []
        self._threads = []

    def __enter__(self) -> TestDnsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _bind(self) -> tuple[_UdpServer, _TcpServer]:
        # The kernel picks a free UDP port; TCP must then get the same
        # number, which another process may hold, so try a few times.
        for _ in range(50):
            udp = _UdpServer((self.host, 0), _UdpHandler)
            udp.owner = self
            port = udp.server_address[1]
            try:
                tcp = _TcpServer((self.host, port), _TcpHandler)
            except OSError as e:
                udp.server_close()
                if e.errno != errno.EADDRINUSE:
                    raise
                continue
            tcp.owner = self
            self.port = port
            return udp, tcp
        raise OSError(errno.EADDRINUSE, "no port free for both UDP and TCP")

    # Changing the data while running.

    def load(self, records: Records) -> None:
        """Replace all records (and failure options) with *records*."""
        with self._lock:
            self._records = {normalize(n): dict(e) for n, e in records.items()}

    def set(
        self, name: str, rtype: str, values: Any, *, ttl: int | None = None
    ) -> None:
        """Replace *name*'s records of *rtype* (creating the name); with
        *ttl*, also set the name's TTL."""
        with self._lock:
            entry = self._records.setdefault(normalize(name), {})
            entry[rtype.upper()] = values
            if ttl is not None:
                entry["ttl"] = ttl

    def delete(self, name: str, rtype: str | None = None) -> None:
        """Remove one type of *name*'s records, or the whole name (which
        then answers NXDOMAIN)."""
        with self._lock:
            key = normalize(name)
            if rtype is None:
                self._records.pop(key, None)
            else:
                self._records.get(key, {}).pop(rtype.upper(), None)

    def servfail(self, name: str, *rtypes: str) -> None:
        """Make *name* answer SERVFAIL, for *rtypes* or every type."""
        self._set_option(name, "servfail", rtypes)

    def timeout(self, name: str, *rtypes: str) -> None:
        """Make *name* not answer at all, for *rtypes* or every type."""
        self._set_option(name, "timeout", rtypes)

    def heal(self, name: str) -> None:
        """Undo ``servfail`` and ``timeout`` for *name*."""
        with self._lock:
            entry = self._records.get(normalize(name), {})
            entry.pop("servfail", None)
            entry.pop("timeout", None)

    def _set_option(self, name: str, option: str, rtypes: tuple[str, ...]) -> None:
        with self._lock:
            entry = self._records.setdefault(normalize(name), {})
            entry[option] = [t.upper() for t in rtypes] if rtypes else True

    # What was asked.

    def queries(self, name: str, rtype: str | None = None) -> int:
        """How many queries for *name* (of *rtype*, or of any type) the
        server has received, answered or not."""
        key = normalize(name)
        with self._lock:
            if rtype is not None:
                return self._counts[(key, rtype.upper())]
            return sum(n for (k, _), n in self._counts.items() if k == key)

    @property
    def query_log(self) -> list[tuple[str, str]]:
        """Every (name, type) asked, in order."""
        with self._lock:
            return list(self._log)

    def reset_queries(self) -> None:
        with self._lock:
            self._counts.clear()
            self._log.clear()

    # Answering.

    def answer(self, data: bytes, *, udp: bool) -> bytes | None:
        """The wire reply to the query *data*, or None to stay silent
        (a malformed query, or a name told to time out)."""
        try:
            request = DNSRecord.parse(data)
        except dnslib.DNSError:
            return None
        if request.header.qr or not request.questions:
            return None
        name = normalize(str(request.q.qname))
        rtype = QTYPE.get(request.q.qtype, str(request.q.qtype))
        with self._lock:
            self._counts[(name, rtype)] += 1
            self._log.append((name, rtype))
            reply = self._reply(request, name, rtype)
        if reply is None:
            return None

        wire = bytes(reply.pack())
        limit = _UDP_LIMIT
        for rr in request.ar:
            # An EDNS OPT record states the client's buffer in its class.
            if rr.rtype == QTYPE.OPT:
                limit = max(limit, rr.rclass)
        if udp and len(wire) > limit:
            # The question stays, the records go (dnslib's truncate()
            # drops the question too, which resolvers reject).
            reply.rr, reply.auth, reply.ar = [], [], []
            reply.header.tc = 1
            wire = bytes(reply.pack())
        return wire

    def _reply(self, request: DNSRecord, name: str, rtype: str) -> DNSRecord | None:
        # Called with the lock held.
        reply = request.reply()
        entry = self._records.get(name, {})
        if _applies(entry.get("timeout"), rtype):
            return None
        if _applies(entry.get("servfail"), rtype):
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        zone = self._zone_of(name)
        if zone is None:
            reply.header.rcode = RCODE.REFUSED
            return reply

        # Follow CNAMEs inside our data, as an authoritative server
        # for all of it would; the chain is bounded against loops.
        owner = name
        for _ in range(_MAX_CHAIN):
            entry = self._records.get(owner, {})
            target = entry.get("CNAME")
            if target is None or rtype == "CNAME":
                break
            reply.add_answer(self._rr(owner, "CNAME", target, entry))
            owner = normalize(target)

        entry = self._records.get(owner, {})
        values = entry.get(rtype)
        if values is not None:
            if rtype == "CNAME":
                values = [values]
            for value in values:
                reply.add_answer(self._rr(owner, rtype, value, entry))
            return reply
        if reply.rr:
            # A CNAME chain ending in data we cannot vouch for.
            return reply
        if not self._exists(owner):
            reply.header.rcode = RCODE.NXDOMAIN
        reply.add_auth(self._soa(self._zone_of(owner) or zone))
        return reply

    def _zone_of(self, name: str) -> str | None:
        zones = self._zones | {n.rsplit(".", 1)[-1] for n in self._records}
        for zone in sorted(zones, key=len, reverse=True):
            if name == zone or name.endswith("." + zone):
                return zone
        return None

    def _exists(self, name: str) -> bool:
        # A name exists if it owns anything, or if a longer name lives
        # under it (an "empty non-terminal", which is NODATA, RFC 8020).
        if any(k not in _OPTIONS for k in self._records.get(name, {})):
            return True
        suffix = "." + name
        return any(other.endswith(suffix) for other in self._records)

    def _rr(self, owner: str, rtype: str, value: Any, entry: Mapping[str, Any]) -> RR:
        ttl = int(entry.get("ttl", self.ttl))
        return RR(
            owner + ".", getattr(QTYPE, rtype), rdata=_rdata(rtype, value), ttl=ttl
        )

    def _soa(self, zone: str) -> RR:
        soa = dnslib.SOA(
            f"ns.{zone}.",
            f"hostmaster.{zone}.",
            (1, 3600, 600, 86400, self.negative_ttl),
        )
        return RR(zone + ".", QTYPE.SOA, rdata=soa, ttl=self.negative_ttl)


def _applies(option: Any, rtype: str) -> bool:
    if option is True:
        return True
    return bool(option) and rtype in option


def _rdata(rtype: str, value: Any) -> dnslib.RD:
    if rtype == "A":
        return dnslib.A(value)
    if rtype == "AAAA":
        return dnslib.AAAA(value)
    if rtype == "MX":
        preference, exchange = value
        return dnslib.MX(exchange, preference)
    if rtype == "TXT":
        data = value.encode() if isinstance(value, str) else bytes(value)
        return dnslib.TXT([data[i : i + 255] for i in range(0, len(data), 255)])
    if rtype == "CNAME":
        return dnslib.CNAME(value)
    if rtype == "PTR":
        return dnslib.PTR(value)
    if rtype == "NS":
        return dnslib.NS(value)
    raise ValueError(f"unsupported record type {rtype!r}")


class _UdpServer(socketserver.ThreadingUDPServer):
    daemon_threads = True
    owner: TestDnsServer


class _TcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    owner: TestDnsServer


class _UdpHandler(socketserver.BaseRequestHandler):
    server: _UdpServer

    def handle(self) -> None:
        data, sock = self.request
        wire = self.server.owner.answer(data, udp=True)
        if wire is not None:
            sock.sendto(wire, self.client_address)


class _TcpHandler(socketserver.BaseRequestHandler):
    server: _TcpServer

    def handle(self) -> None:
        # Messages are length-prefixed (RFC 1035 §4.2.2) and a client
        # may send several on one connection; serve until it closes.
        sock: socket.socket = self.request
        sock.settimeout(0.5)
        owner = self.server.owner
        with contextlib.suppress(OSError):
            while not owner._stopping.is_set():
                header = _read_exactly(sock, 2, owner._stopping)
                if header is None:
                    return
                (length,) = struct.unpack("!H", header)
                data = _read_exactly(sock, length, owner._stopping)
                if data is None:
                    return
                wire = owner.answer(data, udp=False)
                if wire is not None:
                    sock.sendall(struct.pack("!H", len(wire)) + wire)


def _read_exactly(
    sock: socket.socket, size: int, stopping: threading.Event
) -> bytes | None:
    # The socket times out now and then so that a silent client cannot
    # keep the thread past the server's stop.
    chunks = bytearray()
    while len(chunks) < size:
        try:
            chunk = sock.recv(size - len(chunks))
        except TimeoutError:
            if stopping.is_set():
                return None
            continue
        if not chunk:
            return None
        chunks += chunk
    return bytes(chunks)
