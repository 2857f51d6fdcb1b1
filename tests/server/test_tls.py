"""TLS contexts: the self-signed pair, config errors, a real handshake."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509

from postroom.config import Config, TlsConfig
from postroom.errors import ConfigError
from postroom.server import tls


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return Config(data_dir=str(tmp_path), hostname="mail.example.test")


def test_self_signed_pair_is_made_once(config: Config) -> None:
    tls.server_context(config)
    cert = config.tls_dir / tls.CERT_NAME
    key = config.tls_dir / tls.KEY_NAME
    first = cert.read_bytes()

    tls.server_context(config)

    assert cert.read_bytes() == first
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_self_signed_names(config: Config) -> None:
    cert_path, _ = tls.ensure_self_signed(config)
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value

    assert san.get_values_for_type(x509.DNSName) == ["mail.example.test",
                                                     "localhost"]
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {
        "127.0.0.1", "::1"}


def test_new_hostname_gets_new_certificate(config: Config) -> None:
    cert_path, _ = tls.ensure_self_signed(config)
    first = cert_path.read_bytes()

    config.hostname = "mx.example.test"
    tls.server_context(config)

    assert cert_path.read_bytes() != first


def test_minimum_version_is_tls12(config: Config) -> None:
    assert tls.server_context(config).minimum_version == ssl.TLSVersion.TLSv1_2
    assert tls.client_context(verify=False).minimum_version == (
        ssl.TLSVersion.TLSv1_2)


@pytest.mark.parametrize("server_name", ["mail.example.test", "localhost"])
def test_handshake_verifies_against_the_generated_cert(
        config: Config, server_name: str) -> None:
    cert_path, _ = tls.ensure_self_signed(config)
    client = tls.client_context(cafile=cert_path)

    version, reply = _exchange(tls.server_context(config), client, server_name)

    assert version in ("TLSv1.2", "TLSv1.3")
    assert reply == b"250 ok"


def test_handshake_fails_for_a_name_not_in_the_cert(config: Config) -> None:
    cert_path, _ = tls.ensure_self_signed(config)
    client = tls.client_context(cafile=cert_path)

    with pytest.raises(ssl.SSLCertVerificationError):
        _exchange(tls.server_context(config), client, "other.example.test")


def test_configured_files_are_used(tmp_path: Path, config: Config) -> None:
    cert_path, key_path = tls.ensure_self_signed(config)
    other = Config(data_dir=str(tmp_path / "other"),
                   tls=TlsConfig(cert_file=str(cert_path),
                                 key_file=str(key_path), self_signed=False))
    client = tls.client_context(cafile=cert_path)

    _, reply = _exchange(tls.server_context(other), client, "localhost")

    assert reply == b"250 ok"
    assert not other.tls_dir.exists()


def test_nothing_configured_and_no_self_signing(tmp_path: Path) -> None:
    config = Config(data_dir=str(tmp_path),
                    tls=TlsConfig(self_signed=False))
    with pytest.raises(ConfigError, match="no certificate"):
        tls.server_context(config)


def test_missing_file(tmp_path: Path) -> None:
    config = _configured(tmp_path, tmp_path / "nope.crt", tmp_path / "nope.key")
    with pytest.raises(ConfigError, match=r"^tls\.cert_file: .*nope\.crt"):
        tls.server_context(config)


def test_not_pem(tmp_path: Path, config: Config) -> None:
    cert_path, key_path = tls.ensure_self_signed(config)
    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")

    with pytest.raises(ConfigError, match=r"^tls\.cert_file: .*not a PEM"):
        tls.server_context(_configured(tmp_path, junk, key_path))
    with pytest.raises(ConfigError, match=r"^tls\.key_file: .*not a PEM"):
        tls.server_context(_configured(tmp_path, cert_path, junk))


def test_mismatched_pair(tmp_path: Path) -> None:
    a = Config(data_dir=str(tmp_path / "a"))
    b = Config(data_dir=str(tmp_path / "b"))
    cert_a, _ = tls.ensure_self_signed(a)
    _, key_b = tls.ensure_self_signed(b)

    with pytest.raises(ConfigError, match="is not the key of") as info:
        tls.server_context(_configured(tmp_path, cert_a, key_b))
    assert "\n" not in str(info.value)


def _configured(tmp_path: Path, cert: Path, key: Path) -> Config:
    return Config(data_dir=str(tmp_path),
                  tls=TlsConfig(cert_file=str(cert), key_file=str(key),
                                self_signed=False))


def _exchange(server: ssl.SSLContext, client: ssl.SSLContext,
              server_name: str) -> tuple[str | None, bytes]:
    """One TLS connection over 127.0.0.1: the server says "250 ok".

    Returns the negotiated version and what the client read.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        conn.settimeout(5)
        # A failed handshake is the client's to report; the server side
        # only has to stop.
        try:
            with server.wrap_socket(conn, server_side=True) as tls_conn:
                tls_conn.sendall(b"250 ok")
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                client.wrap_socket(raw, server_hostname=server_name) as conn:
            return conn.version(), conn.recv(16)
    finally:
        thread.join(timeout=5)
        listener.close()
