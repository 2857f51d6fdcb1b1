"""The envelope: everything about a message that is not its content.

An envelope is built by the SMTP session from MAIL and RCPT (or by the
HTTP API), stored beside the content in the spool, and read back by the
queue manager and the CLI. It is plain data: no I/O here.

The JSON form is the stored form, so fields are only ever added, with a
default, never renamed; ``from_json`` ignores keys it does not know so an
older build can still read a newer spool.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Recipient:
    """One RCPT TO and its DSN request (RFC 3461 §4).

    ``notify`` is None when the client gave no NOTIFY parameter, an empty
    tuple for NOTIFY=NEVER, else some of SUCCESS, FAILURE, DELAY.
    ``orcpt`` is the decoded ORCPT value, ``"rfc822;user@example.org"``.
    ``state`` is the recipient's place in delivery: queued until the
    delivery engine changes it.
    """

    address: str
    notify: tuple[str, ...] | None = None
    orcpt: str | None = None
    state: str = "queued"


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


@dataclass
class Envelope:
    """MAIL FROM, the recipients and how the message arrived.

    ``sender`` is "" for the null reverse-path ``<>`` (bounces).
    ``body`` is the BODY= parameter as given: "7BIT", "8BITMIME",
    "BINARYMIME", or "" when the client sent none.
    ``tls`` describes the inbound TLS session ("TLSv1.3 TLS_AES_256_GCM_SHA384")
    or is "" for cleartext.
    ``auth_results`` is the verdict of inbound mail authentication
    (``postroom.mailauth``: "spf", "dkim", "dmarc", "from_domain",
    "policy", ...), or None when the message was not checked.
    ``not_before`` is a scheduled send's time (epoch seconds): its
    recipients are first due then, and its age for retries and expiry
    counts from then; 0 for "at once".
    ``api`` holds what the HTTP API was told about the message and
    does not act on yet (request id, key id, categories, custom_args,
    batch_id, tracking settings ...), or None for SMTP mail.
    """

    queue_id: str
    sender: str
    recipients: list[Recipient] = field(default_factory=list)
    received_at: float = 0.0
    body: str = ""
    smtputf8: bool = False
    ret: str | None = None
    envid: str | None = None
    requiretls: bool = False
    declared_size: int | None = None
    client_address: str = ""
    client_helo: str = ""
    auth_user: str | None = None
    listener: str = ""
    tls: str = ""
    auth_results: dict[str, str] | None = None
    not_before: float = 0.0
    api: dict[str, Any] | None = None

    def to_json(self) -> bytes:
        # Built by hand: dataclasses.asdict deep-copies recursively and
        # cost more than the rest of storing a message's envelope.
        data = {f: getattr(self, f) for f in _FIELDS}
        data["recipients"] = [
            {
                "address": r.address,
                "notify": r.notify,
                "orcpt": r.orcpt,
                "state": r.state,
            }
            for r in self.recipients
        ]
        return _ENCODER.encode(data).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> Envelope:
        data: dict[str, Any] = json.loads(raw)
        known = {f.name for f in dataclasses.fields(cls)}
        rcpt_known = {f.name for f in dataclasses.fields(Recipient)}
        recipients = []
        for r in data.get("recipients", []):
            r = {k: v for k, v in r.items() if k in rcpt_known}
            if r.get("notify") is not None:
                r["notify"] = tuple(r["notify"])
            recipients.append(Recipient(**r))
        fields = {k: v for k, v in data.items() if k in known and k != "recipients"}
        return cls(recipients=recipients, **fields)


_FIELDS = tuple(f.name for f in dataclasses.fields(Envelope) if f.name != "recipients")
