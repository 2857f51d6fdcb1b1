"""SPF (RFC 7208): may the client's address send for the sender's domain?

The evaluation is pyspf's (``spf.query``): record selection, the
mechanisms and macros, the ten-lookup and two-void-lookup limits
(§4.6.4), include/redirect. We only feed it DNS and turn its answer
into an ``SpfResult``.

Which identity
--------------
The MAIL FROM domain; for the null reverse-path (bounces) the HELO
name, checked as ``postmaster@<helo>`` (§2.4). We do not check HELO
separately when MAIL FROM is set: §2.3 only recommends it, and DMARC
uses the MAIL FROM result.

DNS
---
pyspf looks names up through its module-level function ``DNSLookup``,
fixed at import to its own use of the system resolver. We replace that
function once, at import of this module, with one that answers from
the ``ThreadDns`` of the check running in the current thread (a
thread-local) and raises TempError when there is none, so that a check
outside ``check`` can never fall back on the system's resolver. The
replacement is process-wide; Postroom is pyspf's only user in its
processes.

Results are pyspf's words, which are RFC 7208's: pass, fail, softfail,
neutral, none, temperror, permerror.

Runs in a worker thread (``ThreadDns`` blocks).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import spf as pyspf

from postroom.mailauth.lookups import TemporaryDnsError, ThreadDns
from postroom.mailauth.results import SpfResult

# RFC 7208 §4.6.4: at least 20 seconds for the whole evaluation.
QUERY_TIME = 20.0

_current = threading.local()


def _lookup(
    name: str, qtype: str, strict: Any = True, timeout: float = 20
) -> list[Any]:
    """pyspf's DNS hook: ``[((name, type), value), ...]`` in the shapes
    its own dnspython adapter returns."""
    dns: ThreadDns | None = getattr(_current, "dns", None)
    if dns is None:
        raise pyspf.TempError("no resolver for this check")
    try:
        found = dns.lookup(name, qtype)
    except TemporaryDnsError as e:
        raise pyspf.TempError(f"DNS {e}") from None
    key = (name, qtype)
    out: list[Any] = []
    for record in found.records:
        if qtype in ("A", "AAAA"):
            out.append((key, str(record.address)))  # type: ignore[attr-defined]
        elif qtype == "MX":
            exchange = record.exchange.to_text(omit_final_dot=True)  # type: ignore[attr-defined]
            out.append((key, (record.preference, exchange)))  # type: ignore[attr-defined]
        elif qtype == "PTR":
            out.append((key, record.target.to_text(omit_final_dot=True)))  # type: ignore[attr-defined]
        elif qtype in ("TXT", "SPF"):
            out.append((key, tuple(bytes(s) for s in record.strings)))  # type: ignore[attr-defined]
    return out


pyspf.DNSLookup = _lookup


def check(
    dns: ThreadDns,
    *,
    client_ip: str,
    sender: str,
    helo: str,
    receiver: str,
) -> SpfResult:
    """Evaluate SPF for *sender* ("" for ``<>``) from *client_ip*.

    *helo* is the client's HELO/EHLO name, *receiver* our host name (the
    %{r} macro). Never raises for the sender's mistakes or DNS trouble:
    those are permerror and temperror results.
    """
    identity = "mailfrom" if sender else "helo"
    domain = sender.rpartition("@")[2] if sender else helo
    if not domain:
        # §2.4: nothing to check (null sender and no usable HELO).
        return SpfResult("none", identity, domain, "no identity to check")

    _current.dns = dns
    started = time.monotonic()
    try:
        query = pyspf.query(
            client_ip, sender, helo, receiver=receiver, querytime=QUERY_TIME
        )
        result, _code, explanation = query.check()
    finally:
        _current.dns = None
    reason = explanation or ""
    if result == "pass":
        reason = f"{client_ip} is allowed by {domain}"
    elif result in ("fail", "softfail"):
        # The explanation of a fail may come from the domain's exp=
        # record: the sender's words. Say it in ours.
        reason = f"{client_ip} is not allowed by {domain}"
    elif result == "none":
        reason = f"no SPF record for {domain}"
    return SpfResult(
        result,
        identity,
        domain,
        reason,
        elapsed=time.monotonic() - started,
    )
