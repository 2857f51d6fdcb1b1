"""DKIM verification (RFC 6376 §6) of every signature of a message.

dkimpy does the work: parsing the message, canonicalization, the body
and header hashes, the key record and the signature check. We call it
once per DKIM-Signature field (``DKIM.verify(idx)``) and sort what
happened into RFC 8601 §2.7.1 results:

    pass       the signature verified
    fail       it did not (body hash mismatch, wrong signature)
    neutral    the signature field itself is malformed or unusable
               (missing or bad tags, expired, i= outside d=): checked
               first, with dkimpy's own field validation
    permerror  no usable key: no record at <s>._domainkey.<d>, a
               revoked or malformed key, or one shorter than 1024 bits
               (RFC 8301 §3.2)
    temperror  the key lookup failed (timeout, SERVFAIL): try later
    policy     not verified: the header section is over
               ``MAX_HEADER_SECTION`` (one result for the message)
    none       no signature at all (one result for the message)

dkimpy reports a missing or malformed key by logging it and returning
False; to tell that from a bad signature we give it a logger of our own
that keeps the last error (``_Recorder``).

At most ``MAX_SIGNATURES`` signatures are checked: each costs a DNS
lookup and a pass over the body, and a sender can add as many as it
likes (RFC 6376 §6.1 lets a verifier stop early).

Runs in a worker thread: hashing a large body and dkimpy's pure-Python
RSA are CPU work, and the key lookups block on ``ThreadDns``.
"""

from __future__ import annotations

import re
from typing import Any

import dkim
import dkim.util

from postroom.mailauth import headers
from postroom.mailauth.lookups import TemporaryDnsError, ThreadDns
from postroom.mailauth.results import DkimResult

# XXX: signatures past the eighth are ignored, not reported, because a
# flood of them is more likely an attack on our CPU than eight honest
# signers; report them as "policy" if that ever confuses anyone.
MAX_SIGNATURES = 8
# A header section longer than this is not handed to dkimpy, whose
# parser joins a folded field line by line: a stranger's field folded
# over a megabyte of short lines would hold a worker (and the GIL) for
# minutes. Postfix's header_size_limit is 100 KiB; a larger one gets
# dkim=policy, which DMARC counts as no pass.
MAX_HEADER_SECTION = 128 * 1024
# Characters of b= shown as header.b (RFC 6008 §4: at least 8).
_B_PREFIX = 12
_WSP = re.compile(rb"\s+")


def verify(dns: ThreadDns, content: bytes) -> tuple[DkimResult, ...]:
    """One result per DKIM-Signature field of *content* (as received,
    before we add any field), in the order they appear; () if none."""
    head = headers.header_section(content)
    if len(head) > MAX_HEADER_SECTION:
        if b"dkim-signature" not in head.lower():
            return ()
        return (DkimResult("policy", reason="header section too large to verify"),)
    recorder = _Recorder()
    try:
        verifier = dkim.DKIM(content, logger=recorder, minkey=1024)
    except dkim.DKIMException as e:
        return (DkimResult("permerror", reason=f"unparsable message: {e}"),)
    fields = [
        value for name, value in verifier.headers if name.lower() == b"dkim-signature"
    ]
    results = []
    for index, value in enumerate(fields[:MAX_SIGNATURES]):
        results.append(_verify_one(dns, verifier, recorder, index, value))
    return tuple(results)


def _verify_one(
    dns: ThreadDns, verifier: dkim.DKIM, recorder: _Recorder, index: int, value: bytes
) -> DkimResult:
    # Step 1: the signature field on its own (RFC 6376 §6.1.1).
    try:
        tags = dkim.util.parse_tag_value(value)
    except dkim.util.InvalidTagValueList as e:
        return DkimResult("neutral", reason=f"malformed signature: {e}")
    domain = _text(tags.get(b"d", b"")).lower()
    selector = _text(tags.get(b"s", b"")).lower()
    b_value = _text(_WSP.sub(b"", tags.get(b"b", b"")))[:_B_PREFIX]
    found = {"domain": domain, "selector": selector, "b": b_value}
    try:
        dkim.validate_signature_fields(tags)
    except dkim.DKIMException as e:
        return DkimResult("neutral", reason=_reason(e), **found)

    # Step 2: key and hashes (§6.1.2, §6.1.3), by dkimpy.
    recorder.last_error = ""
    lookups = _KeyLookup(dns)
    try:
        good = verifier.verify(idx=index, dnsfunc=lookups)
    except TemporaryDnsError as e:
        return DkimResult("temperror", reason=f"key lookup failed: {e}", **found)
    except dkim.ValidationError as e:
        # After step 1 only the body hash check raises this.
        return DkimResult("fail", reason=_reason(e), **found)
    except dkim.DKIMException as e:
        return DkimResult("permerror", reason=_reason(e), **found)
    if good:
        return DkimResult("pass", **found)
    if lookups.missing:
        return DkimResult("permerror", reason="no key for signature", **found)
    if recorder.last_error:
        return DkimResult("permerror", reason=recorder.last_error, **found)
    return DkimResult("fail", reason="signature did not verify", **found)


class _KeyLookup:
    """dkimpy's ``dnsfunc``: the TXT record of a key name, b"" if none."""

    def __init__(self, dns: ThreadDns) -> None:
        self.dns = dns
        self.missing = False

    def __call__(self, name: bytes, timeout: float = 5) -> bytes:
        records = self.dns.txt(_text(name).rstrip("."))
        if not records:
            self.missing = True
            return b""
        # RFC 6376 §3.6.2.2 leaves several records at one name undefined;
        # like dkimpy's own lookup, take the first.
        return records[0]


class _Recorder:
    """A stand-in logger for dkimpy that keeps its last error."""

    def __init__(self) -> None:
        self.last_error = ""

    def error(self, message: Any, *args: Any) -> None:
        self.last_error = str(message) % args if args else str(message)

    def debug(self, *args: Any, **kwargs: Any) -> None:
        pass

    info = warning = debug


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def _reason(error: Exception) -> str:
    # dkimpy's messages sometimes quote whole tag values; keep it short.
    return str(error)[:100]
