"""What the checks found, and the Authentication-Results field saying it.

One ``Verdict`` per message: an ``SpfResult``, a ``DkimResult`` per
signature (at most ``dkimverify.MAX_SIGNATURES``), and a
``DmarcResult``. Results are RFC 8601 §2.7 words:

    spf    pass fail softfail neutral none temperror permerror
    dkim   pass fail neutral policy none temperror permerror
    dmarc  pass fail none temperror permerror

``header`` renders the field (RFC 8601 §2.2): our authserv-id, then one
resinfo per result, each clause rendered by ``authres`` (which quotes
values as the grammar wants), folded one clause per line. Comments
carry our own explanation, never text from the sender's DNS unfiltered:
a comment is reduced to printable ASCII without parentheses or
backslashes, so it cannot end early or break the field. Property values
(HELO name, d=, s=, b=, the From domain) come from the sender too;
``authres`` quotes them but keeps control characters, so a bare CR in a
d= tag (possible with BODY=BINARYMIME) would start a forged field for
any reader that splits lines at CR. Control characters are removed.

``log_fields`` and ``summary`` are the same verdict for the log line
and for the envelope (``Envelope.auth_results``), where later features
(complaint handling, #5) read it without parsing a header.
"""

from __future__ import annotations

import dataclasses
import re

import authres
import authres.dmarc

# Fields an RFC 5322 header line should stay under (§2.1.1: 78).
_MAX_COMMENT = 120
_UNSAFE_COMMENT = re.compile(r"[^\x20-\x7e]|[()\\]")
_UNSAFE_VALUE = re.compile(r"[\x00-\x1f\x7f]")


@dataclasses.dataclass(frozen=True, slots=True)
class SpfResult:
    """*identity* is "mailfrom" or "helo"; *domain* the one checked."""

    result: str
    identity: str
    domain: str
    reason: str = ""
    elapsed: float = 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class DkimResult:
    """One signature: its d= and s= (as written, lower-cased), the
    first characters of b= (RFC 6008 header.b, to tell two signatures
    of one domain apart), and why it did not pass."""

    result: str
    domain: str = ""
    selector: str = ""
    b: str = ""
    reason: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class DmarcResult:
    """*from_domain* is the RFC 5322.From domain; *policy* the published
    p= (or sp=) that applied, *disposition* what the policy asks for
    this message after pct= sampling ("none" on a pass)."""

    result: str
    from_domain: str = ""
    policy: str = ""
    disposition: str = ""
    reason: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    spf: SpfResult
    dkim: tuple[DkimResult, ...]
    dmarc: DmarcResult

    @property
    def dkim_summary(self) -> str:
        """One word for all signatures: pass if any passed, else the
        first signature's result, else none."""
        if not self.dkim:
            return "none"
        if any(d.result == "pass" for d in self.dkim):
            return "pass"
        return self.dkim[0].result

    def log_fields(self) -> dict[str, str | None]:
        """key=value pairs for the one log line per message."""
        dmarc = self.dmarc
        return {
            "spf": self.spf.result,
            "spf_domain": self.spf.domain or None,
            "dkim": self.dkim_summary,
            "dkim_domains": ",".join(
                f"{d.domain}:{d.result}" for d in self.dkim if d.domain
            )
            or None,
            "dmarc": dmarc.result,
            "from_domain": dmarc.from_domain or None,
            "policy": dmarc.policy or None,
            "disposition": dmarc.disposition or None,
        }

    def summary(self) -> dict[str, str]:
        """The verdict as the envelope keeps it (plain strings only)."""
        return {k: v for k, v in self.log_fields().items() if v is not None}


def header(authserv_id: str, verdict: Verdict) -> bytes:
    """The Authentication-Results field, folded, CRLF-terminated."""
    clauses = [_spf_clause(verdict.spf)]
    if verdict.dkim:
        clauses += [_dkim_clause(d) for d in verdict.dkim]
    else:
        clauses.append("dkim=none")
    clauses.append(_dmarc_clause(verdict.dmarc))
    text = f"Authentication-Results: {authserv_id};\r\n\t" + ";\r\n\t".join(clauses)
    return (text + "\r\n").encode("ascii", "replace")


def _spf_clause(spf: SpfResult) -> str:
    # RFC 8601 §2.7.2: smtp.mailfrom carries the MAIL FROM domain (we
    # give the domain only, not the local part), smtp.helo the HELO
    # name when that was the identity checked.
    result = authres.SPFAuthenticationResult(
        result=spf.result, result_comment=_comment(spf.reason) or None
    )
    if domain := _value(spf.domain):
        if spf.identity == "helo":
            result.smtp_helo = domain
        else:
            result.smtp_mailfrom = domain
    return str(result)


def _dkim_clause(dkim: DkimResult) -> str:
    result = authres.DKIMAuthenticationResult(
        result=dkim.result,
        result_comment=_comment(dkim.reason) or None,
        header_d=_value(dkim.domain) or None,
        header_s=_value(dkim.selector) or None,
    )
    if b := _value(dkim.b):
        result.properties.append(
            authres.core.AuthenticationResultProperty("header", "b", b)
        )
    return str(result)


def _dmarc_clause(dmarc: DmarcResult) -> str:
    # The policy and disposition go in a comment, as OpenDMARC writes
    # them: RFC 7489 registers no property for them (header.from only).
    comment = dmarc.reason
    if dmarc.policy:
        comment = f"p={dmarc.policy} dis={dmarc.disposition or 'none'}" + (
            f" {comment}" if comment else ""
        )
    result = authres.dmarc.DMARCAuthenticationResult(
        result=dmarc.result,
        result_comment=_comment(comment) or None,
        header_from=_value(dmarc.from_domain) or None,
    )
    return str(result)


def _comment(text: str) -> str:
    return _UNSAFE_COMMENT.sub("", text).strip()[:_MAX_COMMENT]


def _value(text: str) -> str:
    # No CR, LF or other control character may reach the field.
    return _UNSAFE_VALUE.sub("", text)
