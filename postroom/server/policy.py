"""Who may send what through us: the relay decision.

The rules, in order (first match wins), for each RCPT:

1. ``postmaster`` with no domain is always accepted (RFC 5321 §4.5.1).
2. On ``submission`` and ``submissions`` listeners nothing happens
   without AUTH (RFC 6409 §4.3); MAIL is refused there with 530 already.
3. A recipient in one of our local domains is accepted if it names a
   mailbox (``postroom.mailbox.recipients``: 550 5.1.1 for an unknown
   user, 452 4.2.2 for a full mailbox), unless its local part carries
   routing characters (``%``, ``!``, a quoted ``@``): we never
   reinterpret them, and refusing them keeps old "percent hack" probes
   from looking like an open relay. Without a ``LocalRecipients``
   (tests of the session alone) every local address is accepted.
4. An authenticated client may relay anywhere.
5. A client in ``trusted_networks`` may relay anywhere via the relay
   listener (Postfix's ``mynetworks``; by default only loopback).
6. Everything else: 554 5.7.1 relay access denied.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import TYPE_CHECKING

from postroom.protocol.smtp.replies import Reply
from postroom.protocol.smtp.syntax import Address
from postroom.queue.envelope import Recipient

if TYPE_CHECKING:
    from postroom.mailbox.recipients import LocalRecipients

RELAY_DENIED = Reply.of(554, "5.7.1", "Relay access denied")
AUTH_REQUIRED = Reply.of(530, "5.7.0", "Authentication required")
ROUTING_IN_LOCAL_PART = Reply.of(
    550, "5.7.1", "Source routing in the local part is not supported"
)

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class RelayPolicy:
    def __init__(
        self,
        local_domains: list[str],
        trusted_networks: list[str],
        recipients: LocalRecipients | None = None,
    ) -> None:
        self.local_domains = frozenset(d.lower() for d in local_domains)
        self.recipients = recipients
        self.trusted: tuple[_Network, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in trusted_networks
        )

    def is_trusted(self, client_ip: str) -> bool:
        try:
            ip = ipaddress.ip_address(client_ip)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.trusted)

    def is_local(self, address: Address) -> bool:
        return address.ascii_domain in self.local_domains

    def check_sender(self, listener_kind: str, authenticated: bool) -> Reply | None:
        """None to accept MAIL FROM, or the refusal."""
        if listener_kind != "relay" and not authenticated:
            return AUTH_REQUIRED
        return None

    def check_recipient(
        self,
        rcpt: Address,
        *,
        listener_kind: str,
        authenticated: bool,
        trusted: bool,
    ) -> Reply | None:
        """None to accept RCPT TO, or the refusal."""
        if not rcpt.domain and rcpt.local.lower() == "postmaster":
            return None
        if self.is_local(rcpt):
            if any(c in rcpt.unquoted_local for c in "%!@"):
                return ROUTING_IN_LOCAL_PART
            if self.recipients is not None:
                return self.recipients.check_rcpt(str(rcpt))
            return None
        if authenticated:
            return None
        if trusted and listener_kind == "relay":
            return None
        return RELAY_DENIED

    def check_message(self, recipients: Iterable[Address], size: int) -> Reply | None:
        """None to accept a message of *size* octets at end of data, or
        452 4.2.2 when it fits none of its (all local) mailboxes."""
        if self.recipients is None:
            return None
        return self.recipients.check_message((str(r) for r in recipients), size)

    def expand(self, recipients: list[Recipient]) -> list[Recipient]:
        """The recipients to queue: aliases replaced by their targets
        (``LocalRecipients.expand``)."""
        if self.recipients is None:
            return recipients
        return self.recipients.expand(recipients)
