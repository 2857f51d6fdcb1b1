"""What delivery says about one recipient: the values every part of
delivery hands around (routing, the SMTP client, local delivery, the
scheduler, bounces). Plain data; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from postroom.protocol.smtp.replies import Reply

DELIVERED = "delivered"
DEFERRED = "deferred"
BOUNCED = "bounced"
STATUSES = (DELIVERED, DEFERRED, BOUNCED)

# Routes' transports.
SMTP = "smtp"
LOCAL = "local"


@dataclass(frozen=True, slots=True)
class Peer:
    """The remote end of an attempt: the host name we meant (an MX,
    a route's host, or an IP literal), the address we connected to, and
    the port."""

    host: str
    address: str
    port: int

    def __str__(self) -> str:
        address = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.host}[{address}]:{self.port}"


@dataclass(frozen=True, slots=True)
class Target:
    """One host a route may use, in the order to try them.

    ``addresses`` come from our resolver (A, then AAAA) or are the IP
    literal itself; the client connects to them in order and never
    resolves ``host`` again (it is for TLS names and logs).
    """

    host: str
    port: int
    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Route:
    """How to reach one destination.

    ``destination`` is the key the scheduler queues and limits by (the
    recipient domain in ASCII, lower case). ``transport`` is ``smtp`` or
    ``local``; local routes have no targets. ``tls`` is the policy for
    this destination (none, opportunistic, required, verify); ``auth``
    the (user, password) to use, for a smarthost. ``mx`` says the targets
    came from MX records (as opposed to a static route, a smarthost or an
    implicit MX), which MTA-STS cares about.
    """

    destination: str
    transport: str
    targets: tuple[Target, ...] = ()
    tls: str = "opportunistic"
    auth: tuple[str, str] | None = None
    mx: bool = False
    dns: bool = False


@dataclass(frozen=True, slots=True)
class Result:
    """One recipient's outcome of one attempt.

    ``status`` is one of STATUSES. ``reply`` is the remote server's reply
    that decided it, or one we made up in the same form when there was
    none (DNS failure, connection refused, timeout): then ``peer`` may be
    None. ``failure`` is the failure class (``postroom.delivery.classify``)
    or "" for a delivery.
    """

    status: str
    reply: Reply
    peer: Peer | None = None
    failure: str = ""


class DeliveryError(Exception):
    """A failure that decides every recipient of an attempt the same way
    (routing, connecting, greeting, TLS policy). ``reply`` is the reply
    to record; its class (4xx or 5xx) says deferred or bounced."""

    def __init__(self, reply: Reply, peer: Peer | None = None) -> None:
        super().__init__(str(reply))
        self.reply = reply
        self.peer = peer

    @property
    def permanent(self) -> bool:
        return self.reply.code >= 500
