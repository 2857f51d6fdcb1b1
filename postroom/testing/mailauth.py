"""Helpers for testing inbound mail authentication without the real DNS.

``SigningKey`` is an RSA key made at test time: ``txt`` is the record
to publish at ``<selector>._domainkey.<domain>`` in a ``TestDnsServer``
and ``sign`` adds a DKIM-Signature made by dkimpy (a signer the tests
do not share code with: ``postroom.mailauth.dkim`` signs only at
delivery, with keys on disk).

``RECORDS`` is a small world of sender domains for SPF and DMARC, one
per case a test wants, all under ``.test`` (and ``example.co.uk``, for
an organizational domain under a two-label public suffix). The client
address they mean is ``CLIENT_IP``, the one a test connects from
(``bind`` to it: every 127/8 address is loopback on Linux); the
helpers never decide what a test expects.
"""

from __future__ import annotations

import base64
from typing import Any

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

# The address our test clients connect from; SPF records name it.
CLIENT_IP = "127.0.0.7"
OTHER_IP = "127.0.0.8"
# A short DNS timeout, so that a test of a timeout takes a second.
DNS_TIMEOUT = 0.6


class SigningKey:
    """An RSA key for *domain* and *selector* (1024 bits: the smallest
    RFC 8301 allows, and quick to make)."""

    def __init__(self, domain: str, selector: str = "sel", bits: int = 1024) -> None:
        self.domain = domain
        self.selector = selector
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        self.private_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.DER,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
        self.public_b64 = base64.b64encode(public).decode("ascii")

    @property
    def dns_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    @property
    def txt(self) -> str:
        return f"v=DKIM1; k=rsa; p={self.public_b64}"

    def record(self) -> dict[str, dict[str, Any]]:
        """The key's entry for ``TestDnsServer`` records."""
        return {self.dns_name: {"TXT": [self.txt]}}

    def sign(self, message: bytes, **options: Any) -> bytes:
        """*message* with a DKIM-Signature field on top (relaxed/relaxed,
        From, To, Subject, Date signed unless *options* say otherwise)."""
        options.setdefault("canonicalize", (b"relaxed", b"relaxed"))
        options.setdefault("include_headers", [b"from", b"to", b"subject", b"date"])
        signature = dkim.sign(
            message,
            self.selector.encode(),
            self.domain.encode(),
            self.private_pem,
            **options,
        )
        return bytes(signature) + message


def message(
    from_address: str = "alice@pass.test",
    *,
    subject: str = "hello",
    body: str = "Hello Bob,\r\n\r\nsee you.\r\n",
    extra: str = "",
) -> bytes:
    """A small RFC 5322 message with CRLF line ends."""
    return (
        f"From: Alice <{from_address}>\r\n"
        "To: bob@postroom.test\r\n"
        f"Subject: {subject}\r\n"
        "Date: Mon, 02 Mar 2026 10:00:00 +0000\r\n"
        "Message-ID: <m1@pass.test>\r\n"
        f"{extra}"
        "\r\n"
        f"{body}"
    ).encode()


def spf(*terms: str) -> dict[str, list[str]]:
    return {"TXT": ["v=spf1 " + " ".join(terms)]}


# SPF and DMARC records of the test world; DKIM keys are added by tests.
RECORDS: dict[str, dict[str, Any]] = {
    # SPF results, one domain each.
    "pass.test": spf(f"ip4:{CLIENT_IP}", "-all"),
    "fail.test": spf(f"ip4:{OTHER_IP}", "-all"),
    "softfail.test": spf(f"ip4:{OTHER_IP}", "~all"),
    "neutral.test": spf("?all"),
    "none.test": {"TXT": ["google-site-verification=abc"], "A": [OTHER_IP]},
    "include.test": spf(f"ip4:{OTHER_IP}", "include:pass.test", "-all"),
    "redirect.test": spf("redirect=pass.test"),
    "permerror.test": spf(f"ip4:{CLIENT_IP}", "frobnicate:x", "-all"),
    "loop.test": spf("include:loop.test", "-all"),
    "amech.test": {**spf("a", "-all"), "A": [CLIENT_IP]},
    "mxmech.test": {**spf("mx", "-all"), "MX": [(10, "mail.mxmech.test")]},
    "mail.mxmech.test": {"A": [CLIENT_IP]},
    "helo.test": spf(f"ip4:{CLIENT_IP}", "-all"),
    "slow.test": {**spf(f"ip4:{CLIENT_IP}", "-all"), "timeout": ["TXT"]},
    # DMARC: a policy per case, with SPF passing or failing.
    "_dmarc.pass.test": {"TXT": ["v=DMARC1; p=none"]},
    "reject.test": spf(f"ip4:{OTHER_IP}", "-all"),
    "_dmarc.reject.test": {"TXT": ["v=DMARC1; p=reject; sp=quarantine"]},
    "quarantine.test": spf(f"ip4:{OTHER_IP}", "-all"),
    "_dmarc.quarantine.test": {"TXT": ["v=DMARC1; p=quarantine"]},
    "strict.test": spf(f"ip4:{CLIENT_IP}", "-all"),
    "_dmarc.strict.test": {"TXT": ["v=DMARC1; p=reject; aspf=s; adkim=s"]},
    "bounce.strict.test": spf(f"ip4:{CLIENT_IP}", "-all"),
    "news.reject.test": spf(f"ip4:{OTHER_IP}", "-all"),
    "half.test": spf(f"ip4:{OTHER_IP}", "-all"),
    "_dmarc.half.test": {"TXT": ["v=DMARC1; p=reject; pct=50"]},
    "dmarcslow.test": spf(f"ip4:{CLIENT_IP}", "-all"),
    "_dmarc.dmarcslow.test": {"timeout": True},
    "example.co.uk": spf(f"ip4:{CLIENT_IP}", "-all"),
    "_dmarc.example.co.uk": {"TXT": ["v=DMARC1; p=reject"]},
    "bounces.example.co.uk": spf(f"ip4:{CLIENT_IP}", "-all"),
    "other.co.uk": spf(f"ip4:{CLIENT_IP}", "-all"),
}
