"""Node configuration: ``postroom.toml`` plus environment overrides.

Every setting has a default, documented in ``docs/configuration.md``; a
file only names what differs. Precedence, lowest first: built-in default,
the TOML file, then environment variables. A variable names its setting
as ``POSTROOM_<SECTION>__<KEY>`` (double underscore between section and
key), or ``POSTROOM_<KEY>`` for a top-level key::

    POSTROOM_DATA_DIR=/var/lib/postroom
    POSTROOM_SMTP__MAX_RECIPIENTS=500
    POSTROOM_SMTP__LISTENERS=relay=0.0.0.0:25,submission=0.0.0.0:587

Values from the environment are parsed by the setting's type: integers,
floats, booleans (true/false/yes/no/1/0), comma-separated lists.

Anything wrong raises ``ConfigError`` whose text is one line naming the
setting, e.g. ``smtp.max_recipients: expected an integer, got 'many'``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from postroom.errors import ConfigError

LISTENER_KINDS = ("relay", "submission", "submissions")
POP3_LISTENER_KINDS = ("pop3", "pop3s")
IMAP_LISTENER_KINDS = ("imap", "imaps")
# Which listener kinds each section's ``listeners`` setting may name.
_KINDS_BY_SECTION = {
    "smtp": LISTENER_KINDS,
    "pop3": POP3_LISTENER_KINDS,
    "imap": IMAP_LISTENER_KINDS,
}
TLS_POLICIES = ("none", "opportunistic", "required", "verify")


@dataclass
class Listener:
    """One listening socket.

    ``relay`` is the MX/relay port (25): plain, STARTTLS offered.
    ``submission`` (587) offers STARTTLS and AUTH; relaying needs AUTH.
    ``submissions`` (465) is implicit TLS from the first byte (RFC 8314).
    ``pop3`` (110) offers STLS; ``pop3s`` (995) is implicit TLS.
    ``imap`` (143) offers STARTTLS; ``imaps`` (993) is implicit TLS.
    """

    kind: str
    host: str
    port: int

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.port}"


@dataclass
class SmtpConfig:
    listeners: list[Listener] = field(
        default_factory=lambda: [
            Listener("relay", "127.0.0.1", 2525),
            Listener("submission", "127.0.0.1", 2587),
            Listener("submissions", "127.0.0.1", 2465),
        ]
    )
    workers: int = 0
    max_message_size: int = 36_700_160
    max_recipients: int = 1000
    max_connections: int = 1000
    max_connections_per_ip: int = 100
    command_timeout: float = 300.0
    data_timeout: float = 180.0
    vrfy: str = "cannot-verify"
    expn: str = "cannot-verify"
    bare_newlines: str = "reject"
    undeclared_8bit: str = "reject"
    auth_without_tls: bool = False
    auth_max_failures: int = 3
    auth_failure_delay: float = 1.0
    local_domains: list[str] = field(default_factory=list)
    trusted_networks: list[str] = field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128"]
    )
    shutdown_grace: float = 30.0


@dataclass
class TlsConfig:
    cert_file: str = ""
    key_file: str = ""
    self_signed: bool = True


@dataclass
class QueueConfig:
    spool_dir: str = ""
    database: str = ""
    fsync: bool = True
    segment_size: int = 64 * 1024 * 1024


@dataclass
class DestinationPolicy:
    """Limits and TLS for one destination (a recipient domain), set in
    ``[delivery.destinations."example.com"]``. Zero or "" means "as the
    preset says, else as ``[delivery]`` says"; ``preset`` names a table
    of ``postroom/delivery/presets.toml`` (readable, and overridable
    field by field here)."""

    preset: str = ""
    max_connections: int = 0
    max_messages_per_connection: int = 0
    max_recipients_per_message: int = 0
    messages_per_minute: int = 0
    messages_per_hour: int = 0
    connections_per_minute: int = 0
    tls: str = ""


@dataclass
class DeliveryConfig:
    enabled: bool = True
    helo_name: str = ""
    nameservers: list[str] = field(default_factory=list)
    dns_timeout: float = 5.0
    routes: dict[str, str] = field(default_factory=dict)
    mx_port: int = 25
    smarthost: str = ""
    smarthost_user: str = ""
    smarthost_password: str = ""
    tls: str = "opportunistic"
    tls_ca_file: str = ""
    mta_sts: bool = True
    allowed_networks: list[str] = field(default_factory=list)
    max_connections: int = 100
    max_connections_per_destination: int = 10
    max_messages_per_connection: int = 100
    max_recipients_per_message: int = 50
    connect_timeout: float = 30.0
    command_timeout: float = 300.0
    data_timeout: float = 600.0
    retry_first: float = 300.0
    retry_max: float = 4000.0
    retry_jitter: float = 0.1
    expire_after: float = 5 * 86400.0
    delay_warning_after: float = 4 * 3600.0
    poll_interval: float = 0.1
    destinations: dict[str, DestinationPolicy] = field(default_factory=dict)


@dataclass
class MailauthConfig:
    """Authentication of inbound mail (SPF, DKIM, DMARC) at the relay
    listener, for clients neither trusted nor authenticated; see
    ``postroom/mailauth/inbound.py`` and docs/configuration.md."""

    enabled: bool = True
    reject_dmarc: bool = False
    reject_spf_fail: bool = False
    defer_temperror: bool = False
    nameservers: list[str] = field(default_factory=list)


@dataclass
class Pop3Config:
    """The POP3 server (``server/pop3d.py``); see docs/configuration.md.

    Plain-text logins (USER/PASS, AUTH PLAIN) need TLS (STLS or pop3s)
    unless ``allow_plaintext_auth``, or unless the client is on a
    loopback address and ``loopback_is_secure`` (the password never
    crosses a network there; Dovecot's habit, and what ``make run``
    users with a plain client need).
    """

    enabled: bool = True
    listeners: list[Listener] = field(
        default_factory=lambda: [
            Listener("pop3", "127.0.0.1", 2110),
            Listener("pop3s", "127.0.0.1", 2995),
        ]
    )
    allow_plaintext_auth: bool = False
    loopback_is_secure: bool = True
    max_connections: int = 1000
    max_connections_per_ip: int = 100
    idle_timeout: float = 600.0
    auth_max_failures: int = 3
    auth_failure_delay: float = 1.0


@dataclass
class ImapConfig:
    """The IMAP server (``server/imapd.py``); see docs/configuration.md.

    Plain-text logins follow the POP3 rules (``allow_plaintext_auth``,
    ``loopback_is_secure``). ``idle_timeout`` is the autologout of an
    authenticated session: RFC 3501 §5.4 wants at least 30 minutes, and
    IDLE clients re-issue IDLE every 29 (RFC 2177). Before login the
    shorter ``login_timeout`` applies (RFC 9051 §5.4 allows one
    minute). ``idle_poll_interval``: how often an IDLE session looks
    at its mailbox for news.
    """

    enabled: bool = True
    listeners: list[Listener] = field(
        default_factory=lambda: [
            Listener("imap", "127.0.0.1", 2143),
            Listener("imaps", "127.0.0.1", 2993),
        ]
    )
    allow_plaintext_auth: bool = False
    loopback_is_secure: bool = True
    max_connections: int = 1000
    max_connections_per_ip: int = 100
    idle_timeout: float = 1800.0
    login_timeout: float = 60.0
    idle_poll_interval: float = 0.5
    auth_max_failures: int = 3
    auth_failure_delay: float = 1.0


@dataclass
class HttpConfig:
    """The HTTP API (``postroom/api``); see docs/configuration.md.

    ``address`` is one ``host:port``. The limits are SendGrid's for
    Mail Send (30 MB per request, 1000 personalizations, 1000
    recipients over all of them), each configurable.
    """

    enabled: bool = True
    address: str = "127.0.0.1:8025"
    max_request_size: int = 30 * 1024 * 1024
    max_personalizations: int = 1000
    max_recipients: int = 1000

    @property
    def listener(self) -> Listener:
        host, port = parse_host_port("http.address", self.address)
        return Listener("http", host, port)


@dataclass
class WebhooksConfig:
    """The Event Webhook sender (``postroom/webhooks``); see
    docs/configuration.md. Endpoints themselves are rows, managed with
    ``postroom webhook`` or the API.

    A failed post is tried again after ``retry_first`` seconds, doubling
    up to ``retry_max``; an endpoint failing for longer than
    ``give_up_after`` seconds (0: never) skips the batch it was stuck on
    (SendGrid gives up after 24 hours too).
    """

    enabled: bool = True
    batch_size: int = 500
    poll_interval: float = 1.0
    timeout: float = 10.0
    retry_first: float = 10.0
    retry_max: float = 600.0
    give_up_after: float = 86400.0


@dataclass
class LogConfig:
    level: str = "info"


@dataclass
class MailboxConfig:
    """Local users' mail (``postroom/mailbox``); see docs/configuration.md.

    ``subaddress_delimiter``: each character separates a local part
    from its tag (``alice+tag`` -> ``alice``); "" turns sub-addressing
    off. ``postmaster``: where mail to a postmaster address without its
    own account or alias goes (RFC 5321 §4.5.1); "" means the mailbox
    of ``postmaster@<that domain>``. ``default_quota``: bytes per
    account without a quota of its own, 0 for no limit.
    """

    subaddress_delimiter: str = "+"
    postmaster: str = ""
    default_quota: int = 0


@dataclass
class CampaignsConfig:
    """Contacts and double opt-in (``postroom/campaigns``); see
    docs/configuration.md.

    ``sender``: From of confirmation mails ("" means
    ``postmaster@<hostname>``). ``confirm_url_base``: what confirmation
    links start with, the public address of the HTTP API ("" means
    ``http://<http.address>``). ``confirm_ttl``: seconds a link stays
    good.
    """

    sender: str = ""
    sender_name: str = ""
    confirm_url_base: str = ""
    confirm_ttl: int = 7 * 24 * 3600

    def sender_address(self, hostname: str) -> str:
        return self.sender or f"postmaster@{hostname}"

    def url_base(self, http: HttpConfig) -> str:
        return (self.confirm_url_base or f"http://{http.address}").rstrip("/")


@dataclass
class Config:
    data_dir: str = "postroom-data"
    hostname: str = "localhost"
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    pop3: Pop3Config = field(default_factory=Pop3Config)
    imap: ImapConfig = field(default_factory=ImapConfig)
    mailauth: MailauthConfig = field(default_factory=MailauthConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    log: LogConfig = field(default_factory=LogConfig)
    mailbox: MailboxConfig = field(default_factory=MailboxConfig)
    campaigns: CampaignsConfig = field(default_factory=CampaignsConfig)

    # Derived paths: one place decides where things live under data_dir.

    @property
    def spool_path(self) -> Path:
        return Path(self.queue.spool_dir or Path(self.data_dir) / "spool")

    @property
    def database_url(self) -> str:
        if self.queue.database:
            return self.queue.database
        return f"sqlite:///{Path(self.data_dir).resolve() / 'postroom.db'}"

    @property
    def tls_dir(self) -> Path:
        return Path(self.data_dir) / "tls"

    @property
    def dkim_dir(self) -> Path:
        return Path(self.data_dir) / "dkim"

    @property
    def mailbox_dir(self) -> Path:
        return Path(self.data_dir) / "mailboxes"


_CHOICES: dict[str, tuple[str, ...]] = {
    "smtp.vrfy": ("cannot-verify", "reject"),
    "smtp.expn": ("cannot-verify", "reject"),
    "smtp.bare_newlines": ("reject", "normalize"),
    "smtp.undeclared_8bit": ("reject", "accept"),
    "log.level": ("debug", "info", "warning", "error"),
    "delivery.tls": TLS_POLICIES,
}


def load(
    path: str | os.PathLike[str] | None = None,
    environ: typing.Mapping[str, str] | None = None,
) -> Config:
    """Build a Config from defaults, the TOML file at *path*, and *environ*.

    Raises ConfigError with a one-line message on any bad setting or an
    unreadable file.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except OSError as e:
            raise ConfigError(f"{path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: {e}") from None

    config = Config()
    _apply(config, raw, prefix="")
    _apply_environ(config, os.environ if environ is None else environ)
    _validate(config)
    return config


def _apply(obj: Any, raw: dict[str, Any], prefix: str) -> None:
    hints = typing.get_type_hints(type(obj))
    known = {f.name for f in dataclasses.fields(obj)}
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if key not in known:
            raise ConfigError(f"{name}: unknown setting")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{name}: expected a table")
            _apply(current, value, prefix=f"{name}.")
        else:
            setattr(obj, key, _coerce(name, hints[key], value))


def _apply_environ(config: Config, environ: typing.Mapping[str, str]) -> None:
    for var, text in environ.items():
        if not var.startswith("POSTROOM_"):
            continue
        rest = var[len("POSTROOM_") :].lower()
        section, sep, key = rest.partition("__")
        raw: dict[str, Any] = {section: {key: text}} if sep else {section: text}
        # Environment variables that merely share our prefix (for example
        # POSTROOM_CONFIG, read by the CLI) are not settings.
        target = getattr(config, section, None)
        if target is None or (sep and not dataclasses.is_dataclass(target)):
            continue
        _apply(config, raw, prefix="")


def _coerce(name: str, hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _BOOLS:
            return _BOOLS[value.lower()]
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"{name}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{name}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{name}: expected a string, got {value!r}")
    if origin is dict:
        _key, item = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a table")
        out: dict[str, Any] = {}
        for key, sub in value.items():
            if dataclasses.is_dataclass(item):
                if not isinstance(sub, dict):
                    raise ConfigError(f"{name}.{key}: expected a table")
                obj = item()  # type: ignore[operator]
                _apply(obj, sub, prefix=f"{name}.{key}.")
                out[str(key).lower()] = obj
            else:
                out[str(key).lower()] = _coerce(f"{name}.{key}", item, sub)
        return out
    if origin is list:
        (item,) = typing.get_args(hint)
        if item is Listener:
            return _listeners(name, value)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{name}: expected a list of strings, got {value!r}")
        return value
    raise ConfigError(f"{name}: unsupported setting type")  # pragma: no cover


_BOOLS = {
    "true": True,
    "yes": True,
    "1": True,
    "on": True,
    "false": False,
    "no": False,
    "0": False,
    "off": False,
}


def _listeners(name: str, value: Any) -> list[Listener]:
    """Listeners come as TOML tables ``{kind=..., address=...}`` or as the
    compact string ``kind=host:port,kind=host:port``."""
    items: list[tuple[str, str]] = []
    if isinstance(value, str):
        for part in filter(None, (p.strip() for p in value.split(","))):
            kind, sep, address = part.partition("=")
            if not sep:
                raise ConfigError(f"{name}: expected kind=host:port, got {part!r}")
            items.append((kind.strip(), address.strip()))
    elif isinstance(value, list):
        for entry in value:
            if not isinstance(entry, dict) or set(entry) != {"kind", "address"}:
                raise ConfigError(
                    f"{name}: each listener needs exactly 'kind' and 'address'"
                )
            items.append((str(entry["kind"]), str(entry["address"])))
    else:
        raise ConfigError(f"{name}: expected a list of listeners")

    listeners = []
    kinds = _KINDS_BY_SECTION[name.split(".")[0]]
    for kind, address in items:
        if kind not in kinds:
            raise ConfigError(
                f"{name}: kind must be one of {', '.join(kinds)}, got {kind!r}"
            )
        host, port = parse_host_port(f"{name}", address)
        listeners.append(Listener(kind, host, port))
    return listeners


def listener_setting(kind: str) -> str:
    """The setting a listener of *kind* comes from, for messages:
    ``smtp.listeners``, ``pop3.listeners`` ..."""
    if kind == "http":
        return "http.address"
    for section, kinds in _KINDS_BY_SECTION.items():
        if kind in kinds:
            return f"{section}.listeners"
    return "listeners"


def parse_host_port(name: str, address: str) -> tuple[str, int]:
    """Split ``host:port`` or ``[v6]:port``; raise ConfigError if malformed."""
    host, sep, port_text = address.rpartition(":")
    digits = port_text.isascii() and port_text.isdigit()
    if not sep or not digits or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"{name}: expected host:port, got {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port_text)


def _validate(config: Config) -> None:
    for key, choices in _CHOICES.items():
        section, attr = key.split(".")
        value = getattr(getattr(config, section), attr)
        if value not in choices:
            raise ConfigError(
                f"{key}: must be one of {', '.join(choices)}, got {value!r}"
            )
    positive = (
        "max_message_size",
        "max_recipients",
        "max_connections",
        "max_connections_per_ip",
        "auth_max_failures",
    )
    for attr in positive:
        if getattr(config.smtp, attr) < 1:
            raise ConfigError(f"smtp.{attr}: must be at least 1")
    if not 0 <= config.smtp.workers <= 64:
        raise ConfigError("smtp.workers: must be from 0 (one per core) to 64")
    for attr in ("command_timeout", "data_timeout", "shutdown_grace"):
        if getattr(config.smtp, attr) <= 0:
            raise ConfigError(f"smtp.{attr}: must be greater than 0")
    for net in config.smtp.trusted_networks:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(
                f"smtp.trusted_networks: not a network: {net!r}"
            ) from None
    config.smtp.local_domains = [
        d.lower().rstrip(".") for d in config.smtp.local_domains
    ]
    ports = [(lst.host, lst.port) for lst in config.smtp.listeners]
    if len(set(ports)) != len(ports):
        raise ConfigError("smtp.listeners: two listeners share an address")
    taken = set(ports)
    _validate_pop3(config.pop3, taken)
    _validate_imap(config.imap, taken)
    _validate_http(config.http, taken)
    _validate_delivery(config.delivery)
    _validate_nameservers("mailauth.nameservers", config.mailauth.nameservers)
    if bool(config.tls.cert_file) != bool(config.tls.key_file):
        raise ConfigError("tls: cert_file and key_file go together")
    if config.campaigns.confirm_ttl < 60:
        raise ConfigError("campaigns.confirm_ttl: must be at least 60 seconds")
    base = config.campaigns.confirm_url_base
    if base and not base.startswith(("http://", "https://")):
        raise ConfigError("campaigns.confirm_url_base: must start with http(s)://")


def _validate_delivery(delivery: DeliveryConfig) -> None:
    for name, policy in delivery.destinations.items():
        if policy.tls and policy.tls not in TLS_POLICIES:
            raise ConfigError(
                f"delivery.destinations.{name}.tls: must be one of "
                f"{', '.join(TLS_POLICIES)}, got {policy.tls!r}"
            )
    for net in delivery.allowed_networks:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(
                f"delivery.allowed_networks: not a network: {net!r}"
            ) from None
    _validate_nameservers("delivery.nameservers", delivery.nameservers)
    for attr in (
        "max_connections",
        "max_connections_per_destination",
        "max_messages_per_connection",
        "max_recipients_per_message",
    ):
        if getattr(delivery, attr) < 1:
            raise ConfigError(f"delivery.{attr}: must be at least 1")
    for attr in (
        "dns_timeout",
        "connect_timeout",
        "command_timeout",
        "data_timeout",
        "retry_first",
        "retry_max",
        "expire_after",
        "poll_interval",
    ):
        if getattr(delivery, attr) <= 0:
            raise ConfigError(f"delivery.{attr}: must be greater than 0")
    if not 0 <= delivery.retry_jitter < 1:
        raise ConfigError("delivery.retry_jitter: must be from 0 to below 1")
    if delivery.smarthost:
        parse_host_port("delivery.smarthost", delivery.smarthost)
    if not 1 <= delivery.mx_port <= 65535:
        raise ConfigError("delivery.mx_port: must be from 1 to 65535")


def _validate_nameservers(name: str, servers: list[str]) -> None:
    for server in servers:
        host = server.rsplit(":", 1)[0] if server.count(":") == 1 else server
        if host.startswith("[") and "]:" in host:
            host = host.rsplit(":", 1)[0]
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            raise ConfigError(f"{name}: not an IP address: {server!r}") from None


def _validate_pop3(pop3: Pop3Config, taken: set[tuple[str, int]]) -> None:
    for lst in pop3.listeners:
        if (lst.host, lst.port) in taken:
            raise ConfigError(
                f"pop3.listeners: {lst.host}:{lst.port} is already in use "
                "by another listener"
            )
        taken.add((lst.host, lst.port))
    for attr in ("max_connections", "max_connections_per_ip", "auth_max_failures"):
        if getattr(pop3, attr) < 1:
            raise ConfigError(f"pop3.{attr}: must be at least 1")
    for attr in ("idle_timeout", "auth_failure_delay"):
        if getattr(pop3, attr) <= 0:
            raise ConfigError(f"pop3.{attr}: must be greater than 0")


def _validate_http(http: HttpConfig, taken: set[tuple[str, int]]) -> None:
    listener = http.listener  # ConfigError if the address is malformed
    if http.enabled and (listener.host, listener.port) in taken:
        raise ConfigError(
            f"http.address: {http.address} is already in use by another listener"
        )
    for attr in ("max_request_size", "max_personalizations", "max_recipients"):
        if getattr(http, attr) < 1:
            raise ConfigError(f"http.{attr}: must be at least 1")


def _validate_imap(imap: ImapConfig, taken: set[tuple[str, int]]) -> None:
    for lst in imap.listeners:
        if (lst.host, lst.port) in taken:
            raise ConfigError(
                f"imap.listeners: {lst.host}:{lst.port} is already in use "
                "by another listener"
            )
        taken.add((lst.host, lst.port))
    for attr in ("max_connections", "max_connections_per_ip", "auth_max_failures"):
        if getattr(imap, attr) < 1:
            raise ConfigError(f"imap.{attr}: must be at least 1")
    for attr in (
        "idle_timeout",
        "login_timeout",
        "idle_poll_interval",
        "auth_failure_delay",
    ):
        if getattr(imap, attr) <= 0:
            raise ConfigError(f"imap.{attr}: must be greater than 0")
