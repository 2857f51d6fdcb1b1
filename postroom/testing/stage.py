"""The seed story's stage for end-to-end tests: a DNS server and scripted
providers on their own loopback addresses.

The providers stand where the seed story puts them: gmail.test on
127.0.0.2, outlook.test on 127.0.0.3, hotmail.test on 127.0.0.4, all on
one free port (give it to the node as ``delivery.mx_port``), plus
sender.test on 127.0.0.5 where notices to the organiser land. Nothing
resolves a name through the system or leaves loopback:
``Stage.settings()`` points ``delivery.nameservers`` at the stage's DNS
server and ``delivery.allowed_networks`` refuses anything else.
"""

from __future__ import annotations

import smtplib
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from postroom.testing.dns import TestDnsServer
from postroom.testing.process import LOOPBACK, PostroomProcess
from postroom.testing.providers import FakeProvider

PROVIDERS = {
    "gmail.test": "127.0.0.2",
    "outlook.test": "127.0.0.3",
    "hotmail.test": "127.0.0.4",
    "sender.test": "127.0.0.5",
}
ORGANISER = "events@sender.test"
CLIENTS = [
    f"client{i:02d}@{domain}"
    for i, domain in enumerate(["gmail.test", "outlook.test", "hotmail.test"] * 6)
]
INVITATION = (
    f"From: Lumen Events <{ORGANISER}>\r\n"
    "To: Our best clients <clients@sender.test>\r\n"
    "Subject: You are invited: the winter evening, 18 December\r\n"
    "Date: Thu, 03 Dec 2026 10:00:00 +0000\r\n"
    "Message-ID: <invite-2026@sender.test>\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "\r\n"
    "Dear client,\r\n"
    "\r\n"
    "Please join us on 18 December at 19:00.\r\n"
    ".A line that starts with a dot survives.\r\n"
).encode()


def common_port() -> int:
    """A port free on every provider address."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.2", 0))
            port: int = probe.getsockname()[1]
        try:
            for address in PROVIDERS.values():
                with socket.socket() as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind((address, port))
            return port
        except OSError:
            continue
    raise RuntimeError("no port free on every provider address")


def zones() -> dict[str, dict[str, object]]:
    records: dict[str, dict[str, object]] = {}
    for domain, address in PROVIDERS.items():
        records[domain] = {"MX": [(10, f"mx.{domain}")]}
        records[f"mx.{domain}"] = {"A": [address]}
    records["null.test"] = {"MX": [(0, ".")]}
    return records


@dataclass
class Stage:
    dns: TestDnsServer
    providers: dict[str, FakeProvider]
    port: int

    def settings(self, **delivery: object) -> dict[str, dict[str, object]]:
        return {
            "delivery": {
                "enabled": True,
                "nameservers": [self.dns.address],
                "mx_port": self.port,
                "allowed_networks": ["127.0.0.0/8"],
                "poll_interval": 0.1,
                **delivery,
            }
        }


@contextmanager
def open_stage() -> Iterator[Stage]:
    """Start the DNS server and the providers; stop them on leaving."""
    port = common_port()
    with ExitStack() as stack:
        dns = stack.enter_context(TestDnsServer(zones(), zones=["test"]))
        providers = {
            domain: stack.enter_context(FakeProvider.in_thread(address, port))
            for domain, address in PROVIDERS.items()
        }
        yield Stage(dns, providers, port)


def send(node: PostroomProcess, recipients: list[str], content: bytes) -> str:
    with smtplib.SMTP(LOOPBACK, node.relay_port, timeout=10) as client:
        client.ehlo("app.sender.test")
        client.mail(ORGANISER)
        for rcpt in recipients:
            code, text = client.rcpt(rcpt)
            assert code == 250, (rcpt, code, text)
        code, text = client.data(content)
        assert code == 250, text
    return text.decode().rsplit(" ", 1)[-1]


def wait_until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.05)
