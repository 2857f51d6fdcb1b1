"""TLS contexts for our listeners, and for tests and tools that connect.

``server_context`` uses the certificate and key named by ``tls.cert_file``
and ``tls.key_file``. When neither is set and ``tls.self_signed`` is true
(the default), it makes a self-signed certificate for ``hostname`` once,
under ``Config.tls_dir``, and reuses it on later starts. That is enough
for opportunistic STARTTLS between MTAs, where peers rarely verify
(RFC 7435), and for tests; submission clients need a real certificate.

A generated certificate is made again when it has expired or no longer
names the configured hostname. Its key is ECDSA P-256: every TLS 1.2
stack supports it and making one takes microseconds, where RSA-2048
takes a noticeable fraction of a second per test.

Every problem with the files is a ``ConfigError`` with one line naming
the setting and the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import ipaddress
import logging
import os
import ssl
from collections.abc import Iterator
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from postroom import logs
from postroom.config import Config
from postroom.errors import ConfigError

log = logging.getLogger(__name__)

CERT_NAME = "self-signed.crt"
KEY_NAME = "self-signed.key"

# Long enough that nobody meets an expiry in practice; a restart after
# it makes a new one.
_VALIDITY = dt.timedelta(days=3650)

_LOOPBACK_NAMES = ("localhost",)
_LOOPBACK_IPS = ("127.0.0.1", "::1")


def server_context(config: Config) -> ssl.SSLContext:
    """A server-side context with our certificate, TLS 1.2 at least.

    Raises ConfigError with one line when the configured (or generated)
    files are missing, unreadable, not PEM, or do not belong together, or
    when no certificate is configured and self-signing is off.
    """
    if config.tls.cert_file and config.tls.key_file:
        cert_path = Path(config.tls.cert_file)
        key_path = Path(config.tls.key_file)
    elif config.tls.self_signed:
        cert_path, key_path = ensure_self_signed(config)
    else:
        raise ConfigError(
            "tls: no certificate: set tls.cert_file and tls.key_file, "
            "or tls.self_signed = true"
        )

    _check_pair(cert_path, key_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # RFC 8996 deprecates TLS 1.0 and 1.1; RFC 8314 §4.1 asks for 1.2+.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_path, key_path)
    except (OSError, ssl.SSLError) as e:
        # _check_pair caught the usual faults; this is whatever OpenSSL
        # still objects to (say, a key too weak for its security level).
        raise ConfigError(
            f"tls: cannot use {cert_path} with {key_path}: {_reason(e)}"
        ) from None
    return context


def client_context(
    cafile: str | os.PathLike[str] | None = None, verify: bool = True
) -> ssl.SSLContext:
    """A client-side context, TLS 1.2 at least.

    With *verify*, the peer must present a certificate for the name
    passed as ``server_hostname``, signed by *cafile* (a PEM bundle; a
    self-signed certificate is its own CA) or, without *cafile*, by the
    system's trust store. Without *verify*, anything is accepted: only
    for tests and for opportunistic TLS, where a man in the middle could
    as well strip STARTTLS.
    """
    if verify:
        context = ssl.create_default_context(cafile=cafile)
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def ensure_self_signed(config: Config) -> tuple[Path, Path]:
    """Return (certificate, key) paths of the self-signed pair for
    ``config.hostname``, making them first if they are missing, expired
    or for another hostname.
    """
    tls_dir = config.tls_dir
    cert_path, key_path = tls_dir / CERT_NAME, tls_dir / KEY_NAME
    try:
        tls_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Two processes starting at once (the server and a CLI command)
        # must not each write half a pair.
        with _locked(tls_dir / ".lock"):
            if not _usable(cert_path, key_path, config.hostname):
                _generate(cert_path, key_path, config.hostname)
    except OSError as e:
        raise ConfigError(
            f"tls: cannot make a self-signed certificate in {tls_dir}: "
            f"{e.strerror or e}"
        ) from None
    return cert_path, key_path


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _usable(cert_path: Path, key_path: Path, hostname: str) -> bool:
    # Anything odd about an existing generated pair means: make a new
    # one. These files are ours, so replacing them loses nothing.
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        names = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.DNSName)
    except (
        OSError,
        ValueError,
        TypeError,
        UnsupportedAlgorithm,
        x509.ExtensionNotFound,
    ):
        return False
    now = dt.datetime.now(dt.UTC)
    return (
        _public_der(key.public_key()) == _public_der(cert.public_key())
        and hostname.lower() in names
        and cert.not_valid_before_utc <= now < cert.not_valid_after_utc
    )


def _generate(cert_path: Path, key_path: Path, hostname: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = dt.datetime.now(dt.UTC)
    dns_names = dict.fromkeys([hostname.lower(), *_LOOPBACK_NAMES])
    alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    alt_names += [x509.IPAddress(ipaddress.ip_address(a)) for a in _LOOPBACK_IPS]
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    # A leaf, not a CA, with the key identifiers that OpenSSL's strict
    # mode (VERIFY_X509_STRICT, default in Python 3.13) insists on.
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # Backdated a little for peers whose clocks run slow.
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Both writes happen under the lock, so two processes cannot
    # interleave halves of their pairs.
    _write_atomically(key_path, key_pem, 0o600)
    _write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    # The mode is set at creation, so the key is never readable by others,
    # not even for an instant; the rename makes the file appear whole.
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _check_pair(cert_path: Path, key_path: Path) -> None:
    # Parse both files ourselves first: OpenSSL's own errors ("[SSL] PEM
    # lib (_ssl.c:3900)") do not say which file is at fault.
    cert_pem = _read("tls.cert_file", cert_path)
    key_pem = _read("tls.key_file", key_path)
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise ConfigError(
            f"tls.cert_file: {cert_path}: not a PEM certificate"
        ) from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise ConfigError(
            f"tls.key_file: {key_path}: the key is encrypted; "
            "store it without a passphrase"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"tls.key_file: {key_path}: not a PEM private key") from None
    if _public_der(key.public_key()) != _public_der(cert.public_key()):
        raise ConfigError(
            f"tls: {key_path} is not the key of the certificate {cert_path}"
        )


def _public_der(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _read(setting: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{setting}: {path}: {e.strerror or e}") from None


def _reason(error: Exception) -> str:
    if isinstance(error, ssl.SSLError) and error.reason:
        return error.reason.lower().replace("_", " ")
    return str(error)


async def start_server_tls(
    transport: asyncio.Transport,
    protocol: asyncio.BaseProtocol,
    context: ssl.SSLContext,
    *,
    timeout: float,
    peer: str,
) -> asyncio.Transport | None:
    """The server side of STARTTLS/STLS, shared by the SMTP, POP3 and
    IMAP sessions: the handshake on *transport*, bounded by *timeout*.

    Returns the TLS transport, or None when the handshake failed or the
    client went away; the failure is logged and the connection aborted,
    since after a failed handshake neither side knows what the other
    has seen (RFC 3207 §4.1 leaves the session unusable).
    """
    loop = asyncio.get_running_loop()
    try:
        new = await asyncio.wait_for(
            loop.start_tls(transport, protocol, context, server_side=True),
            timeout=timeout,
        )
    except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as e:
        log.warning(
            logs.event("tls", client=peer, result="failed", error=type(e).__name__)
        )
        transport.abort()
        return None
    return new
