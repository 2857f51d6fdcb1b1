"""DKIM signing (RFC 6376, RFC 8463) with keys kept under the data dir.

Keys
----
One private key per (domain, selector), one file each::

    <dkim_dir>/<domain>/<selector>.rsa        PEM (PKCS#1), RSA
    <dkim_dir>/<domain>/<selector>.ed25519    base64 of the raw 32-byte key

The suffix is the key's only metadata: it names the algorithm, so a key
is a single file and can be written atomically (temporary file, fsync,
link or rename, fsync of the directory). Files are mode 0600 in
directories of mode 0700. The Ed25519 form is the one dkimpy hands to
PyNaCl; the public half of either kind is derived from the private key
whenever it is needed, so there is nothing else to keep in step.
Domains are stored as lower-case A-labels (RFC 8616 §4: d= is always
ASCII), selectors in lower case. An operator bringing a key from
another signer copies its PEM file to ``<domain>/<selector>.rsa``.

Which keys sign
---------------
``DkimSigner.sign`` signs with every key of the domain in the message's
From field (RFC 5322.From, the one DMARC aligns with), and with nothing
else: a key for ``example.com`` does not sign for ``news.example.com``.
DMARC's relaxed alignment would accept such a signature, but picking a
parent's key is a guess about the operator's intent that an explicit
key per sending domain makes unnecessary. A domain with both an RSA and
an Ed25519 key gets two signatures, as RFC 8463 §6 suggests while many
verifiers still know only RSA.

What is signed
--------------
relaxed/relaxed canonicalization, which survives the header refolding
and trailing-space changes that relays commonly make. The header list
is ``SIGNED_FIELDS`` as far as present, each as often as it occurs;
From is listed once more than it occurs (over-signed, RFC 6376 §8.15),
so a second From added in transit breaks the signature. No l= tag
(it lets anyone append to the body) and no x= expiry.

Performance
-----------
Measured on the development machine (2 cores, through ``sign``, 10 KB
message): an rsa-2048 signature costs 9-13 ms, an Ed25519 one about
1 ms, a message whose From domain has no key 75 us (finding the From
address), and any message when there are no keys at all under 1 us.
Hashing is hashlib (C), but dkimpy performs the RSA private-key
operation itself in pure Python (big-integer ``pow`` with CRT), 8 ms
of it; the same operation in ``cryptography`` takes 0.7 ms. XXX: so a
core signs only about a hundred RSA messages a second, and holds the
GIL all the while: callers must sign off the SMTP event loop (in a
worker thread, or at delivery). Acceptable while signing stays off the
receive path; if it becomes the bottleneck, sign the header hash with
``cryptography`` and keep dkimpy for canonicalization.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email.utils
import logging
import os
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dkim
import idna
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from postroom import logs
from postroom.errors import PostroomError

log = logging.getLogger(__name__)

RSA = "rsa-sha256"
ED25519 = "ed25519-sha256"

# Algorithm (a= tag) -> key type (k= tag), which is also the file suffix.
KEY_TYPES = {RSA: "rsa", ED25519: "ed25519"}
_ALGORITHMS = {kind: algorithm for algorithm, kind in KEY_TYPES.items()}

DEFAULT_SELECTOR = "postroom"

# RFC 8301 §3.2: signers MUST use at least 1024 bits and SHOULD use
# 2048; above 4096 the TXT record grows past what many DNS hosting
# panels accept, and signing gets slower for no practical gain.
MIN_RSA_BITS = 1024
MAX_RSA_BITS = 4096

# The fields we sign when present, in the order they go into h=. Those
# RFC 6376 §5.4.1 names, plus the list and threading fields whose
# change would alter what a reader sees or what unsubscribing does
# (RFC 8058 §4 requires List-Unsubscribe and -Post to be signed).
SIGNED_FIELDS: tuple[bytes, ...] = (
    b"from",
    b"to",
    b"cc",
    b"subject",
    b"date",
    b"message-id",
    b"reply-to",
    b"in-reply-to",
    b"references",
    b"mime-version",
    b"content-type",
    b"content-transfer-encoding",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
)
_OVERSIGNED = frozenset({b"from"})

# A selector is one or more DNS labels (RFC 6376 §3.1).
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_SELECTOR = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")

# A From field at the start of a header line, with its continuation
# lines (RFC 5322 §2.2.3 folding).
_FROM_FIELD = re.compile(rb"(?:^|\n)from[ \t]*:((?:[^\n]*\n[ \t])*[^\n]*)", re.I)

# A TXT record is a list of strings of at most 255 octets (RFC 1035
# §3.3.14); verifiers join them (RFC 6376 §3.6.2.2).
_TXT_STRING = 255


class DkimError(PostroomError):
    """A DKIM key could not be made, found or read. One line for the user."""


class KeyExists(DkimError):
    """Generating a key would replace an existing one (``path``)."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


@dataclass(frozen=True)
class DkimKey:
    """One signing key as stored: where, for what, and both halves.

    ``private_key`` is in the form dkimpy's ``sign`` takes (PEM bytes for
    RSA, base64 of the raw key for Ed25519); ``public_key`` is the
    base64 text of the record's p= tag.
    """

    domain: str
    selector: str
    algorithm: str
    path: Path
    public_key: str
    private_key: bytes = field(repr=False)

    @property
    def key_type(self) -> str:
        """The k= tag: ``rsa`` or ``ed25519``."""
        return KEY_TYPES[self.algorithm]

    @property
    def dns_name(self) -> str:
        """Where the public key is published (RFC 6376 §3.6.2.1)."""
        return f"{self.selector}._domainkey.{self.domain}"

    def txt_record(self) -> str:
        """The TXT record's text, as one string."""
        return f"v=DKIM1; k={self.key_type}; p={self.public_key}"

    def zone_line(self) -> str:
        """The record as one zone-file line, split into 255-octet strings."""
        text = self.txt_record()
        parts = [text[i : i + _TXT_STRING] for i in range(0, len(text), _TXT_STRING)]
        strings = " ".join(f'"{part}"' for part in parts)
        return f"{self.dns_name}. IN TXT ( {strings} )"


# ----------------------------------------------------------------------
# Names


def normalize_domain(domain: str) -> str:
    """*domain* as a lower-case A-label without a trailing dot.

    Raises DkimError when it is not a valid domain name.
    """
    name = domain.strip().rstrip(".").lower()
    try:
        ascii_name = idna.encode(name, uts46=True).decode("ascii")
    except idna.IDNAError as e:
        raise DkimError(f"not a valid domain: {domain!r} ({e})") from None
    if "." not in ascii_name:
        raise DkimError(f"not a valid domain: {domain!r} (no dot)")
    return ascii_name


def normalize_selector(selector: str) -> str:
    """*selector* in lower case; DkimError unless it is DNS labels."""
    name = selector.strip().lower()
    if not _SELECTOR.fullmatch(name):
        raise DkimError(
            f"not a valid selector: {selector!r} (letters, digits, '-' and '.')"
        )
    return name


# ----------------------------------------------------------------------
# Keys on disk


def generate_key(
    dkim_dir: Path,
    domain: str,
    selector: str = DEFAULT_SELECTOR,
    algorithm: str = RSA,
    bits: int = 2048,
    *,
    force: bool = False,
) -> DkimKey:
    """Make a key for (*domain*, *selector*) and store it under *dkim_dir*.

    *algorithm* is ``rsa-sha256`` or ``ed25519-sha256``; *bits* applies
    to RSA only. An existing key for the pair, of either algorithm, is
    kept and KeyExists raised unless *force* is true, in which case it
    is replaced. Raises DkimError for a bad domain, selector, algorithm
    or size, or when the file cannot be written.
    """
    domain = normalize_domain(domain)
    selector = normalize_selector(selector)
    if algorithm not in KEY_TYPES:
        raise DkimError(
            f"unknown algorithm: {algorithm!r} (use {' or '.join(KEY_TYPES)})"
        )
    if algorithm == RSA and not MIN_RSA_BITS <= bits <= MAX_RSA_BITS:
        raise DkimError(
            f"RSA key size must be from {MIN_RSA_BITS} to {MAX_RSA_BITS} bits,"
            f" got {bits}"
        )

    # Refuse before spending a second on an RSA key we would throw away.
    folder = Path(dkim_dir) / domain
    existing = _existing(folder, selector)
    if existing is not None and not force:
        raise KeyExists(
            f"a key for {selector}._domainkey.{domain} exists: {existing}", existing
        )

    private_key = _new_rsa(bits) if algorithm == RSA else _new_ed25519()
    path = folder / f"{selector}.{KEY_TYPES[algorithm]}"
    try:
        _make_private_dir(Path(dkim_dir))
        _make_private_dir(folder)
        _write_private(path, private_key, replace=force)
        if existing is not None and existing != path:
            # Same selector, other algorithm: the new key supersedes it.
            existing.unlink(missing_ok=True)
    except FileExistsError:
        raise KeyExists(
            f"a key for {selector}._domainkey.{domain} exists: {path}", path
        ) from None
    except OSError as e:
        raise DkimError(f"cannot write {path}: {e.strerror}") from None
    return read_key(path)


def load_key(dkim_dir: Path, domain: str, selector: str = DEFAULT_SELECTOR) -> DkimKey:
    """The stored key for (*domain*, *selector*); DkimError if none."""
    domain = normalize_domain(domain)
    selector = normalize_selector(selector)
    path = _existing(Path(dkim_dir) / domain, selector)
    if path is None:
        raise DkimError(f"no DKIM key for {selector}._domainkey.{domain}")
    return read_key(path)


def list_keys(dkim_dir: Path) -> list[DkimKey]:
    """Every key under *dkim_dir*, sorted by domain and selector.

    Files that are not keys (temporary files, other suffixes) are
    ignored; a key file that cannot be read raises DkimError.
    """
    return [read_key(path) for path in key_files(Path(dkim_dir))]


def key_files(dkim_dir: Path, domain: str | None = None) -> list[Path]:
    """The key files under *dkim_dir* (of *domain* only, if given),
    sorted by domain and selector, without reading them."""
    root = Path(dkim_dir)
    try:
        if domain is not None:
            folders = [root / normalize_domain(domain)]
        else:
            folders = sorted(p for p in root.iterdir() if p.is_dir())
        return [
            path
            for folder in folders
            if folder.is_dir()
            for path in sorted(folder.iterdir())
            if not path.name.startswith(".") and path.suffix[1:] in _ALGORITHMS
        ]
    except FileNotFoundError:
        return []


def read_key(path: Path) -> DkimKey:
    """Load one key file named ``<dkim_dir>/<domain>/<selector>.<type>``.

    Raises DkimError when the file is unreadable or holds no valid key.
    """
    selector, _, kind = path.name.rpartition(".")
    algorithm = _ALGORITHMS.get(kind)
    if algorithm is None or not selector:
        raise DkimError(
            f"{path}: not a key file name (want SELECTOR.rsa or SELECTOR.ed25519)"
        )
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DkimError(f"cannot read {path}: {e.strerror}") from None
    if algorithm == RSA:
        public = _rsa_public(path, data)
    else:
        public = _ed25519_public(path, data)
    return DkimKey(
        domain=path.parent.name,
        selector=selector,
        algorithm=algorithm,
        path=path,
        public_key=public,
        private_key=data,
    )


def _existing(folder: Path, selector: str) -> Path | None:
    for kind in _ALGORITHMS:
        path = folder / f"{selector}.{kind}"
        if path.exists():
            return path
    return None


def _new_rsa(bits: int) -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    # PKCS#1 ("BEGIN RSA PRIVATE KEY"): what opendkim and older dkimpy
    # read too, so the file can move to another signer unchanged.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _new_ed25519() -> bytes:
    key = ed25519.Ed25519PrivateKey.generate()
    raw = key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    return base64.b64encode(raw) + b"\n"


def _rsa_public(path: Path, data: bytes) -> str:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise DkimError(f"{path}: not an unencrypted PEM private key ({e})") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise DkimError(f"{path}: not an RSA key")
    # p= holds the DER SubjectPublicKeyInfo (RFC 6376 §3.6.1).
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode("ascii")


def _ed25519_public(path: Path, data: bytes) -> str:
    try:
        raw = base64.b64decode(data.strip(), validate=True)
        key = ed25519.Ed25519PrivateKey.from_private_bytes(raw)
    except (binascii.Error, ValueError):
        raise DkimError(
            f"{path}: not an Ed25519 key (want base64 of 32 raw bytes)"
        ) from None
    # p= holds the raw 32-byte public key (RFC 8463 §4).
    raw_public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return base64.b64encode(raw_public).decode("ascii")


def _make_private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _write_private(path: Path, data: bytes, *, replace: bool) -> None:
    """Write *data* to *path* whole or not at all, mode 0600.

    Without *replace*, an existing *path* raises FileExistsError: link()
    refuses atomically where a check followed by rename() could race.
    """
    fd, temp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:  # mkstemp made it 0600 already
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(temp, path)
        else:
            os.link(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------
# Signing


class DkimSigner:
    """Signs messages with the keys under *dkim_dir*.

    Keys are read once and kept; every *rescan_interval* seconds (on the
    next ``sign``) the directory is looked at again and the keys re-read
    if any file was added, removed or changed, so a new key takes effect
    without a restart. ``reload`` forces that at once.

    An instance may be shared by threads: the key table is replaced
    whole, never changed in place.
    """

    def __init__(
        self,
        dkim_dir: Path,
        *,
        rescan_interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dkim_dir = Path(dkim_dir)
        self.rescan_interval = rescan_interval
        self._clock = clock
        self._keys: dict[str, tuple[DkimKey, ...]] = {}
        self._snapshot: tuple[tuple[str, int], ...] | None = None
        self._scanned_at = float("-inf")

    def reload(self) -> None:
        """Read the keys again now, whether or not files changed."""
        self._snapshot = None
        self._scanned_at = float("-inf")
        self._refresh()

    def keys_for(self, domain: str) -> tuple[DkimKey, ...]:
        """The keys that sign for *domain* (an A-label, lower case)."""
        self._refresh()
        return self._keys.get(domain, ())

    def sign(self, content: bytes, *, queue_id: str = "") -> bytes:
        """*content* with a DKIM-Signature prepended per key of its From
        domain, or *content* itself when there is no such key or the
        message cannot be signed (no From, a header dkimpy cannot parse;
        logged as a warning with *queue_id*).

        *content* may use CRLF or LF line ends; the added fields use the
        same. 8-bit header or body bytes are signed as they are.
        """
        self._refresh()
        if not self._keys:
            return content
        keys = [
            key
            for domain in _from_domains(content)
            for key in self._keys.get(domain, ())
        ]
        if not keys:
            return content

        linesep = _line_ending(content)
        try:
            message = dkim.DKIM(content, linesep=linesep)
        except (dkim.DKIMException, IndexError) as e:
            # IndexError: dkimpy's parser trips over a message whose
            # first line is a continuation line.
            self._warn(queue_id, keys[0], e)
            return content
        if not any(name.lower() == b"from" for name, _ in message.headers):
            # We found a From that dkimpy did not ("From :" reads to it
            # as an mbox separator): a signature would cover no From.
            self._warn(queue_id, keys[0], "no From field that dkimpy can read")
            return content
        fields = _fields_to_sign(message.headers)
        signatures = []
        for key in keys:
            try:
                signatures.append(
                    message.sign(
                        key.selector.encode("ascii"),
                        key.domain.encode("ascii"),
                        key.private_key,
                        signature_algorithm=key.algorithm.encode("ascii"),
                        canonicalize=(b"relaxed", b"relaxed"),
                        include_headers=fields,
                    )
                )
            except dkim.DKIMException as e:
                self._warn(queue_id, key, e)
        return b"".join(signatures) + content

    def _refresh(self) -> None:
        now = self._clock()
        if now - self._scanned_at < self.rescan_interval:
            return
        self._scanned_at = now
        snapshot = _snapshot(self.dkim_dir)
        if snapshot == self._snapshot:
            return
        self._snapshot = snapshot
        self._keys = _load_table(self.dkim_dir)

    def _warn(self, queue_id: str, key: DkimKey, error: object) -> None:
        log.warning(
            _event(
                queue_id,
                result="unsigned",
                domain=key.domain,
                selector=key.selector,
                error=str(error),
            )
        )


def _event(queue_id: str | None, **fields: str) -> str:
    return logs.event("dkim", queue_id or None, **fields)


def _snapshot(dkim_dir: Path) -> tuple[tuple[str, int], ...]:
    """What changes when a key is added, replaced or removed."""
    entries = []
    for path in key_files(dkim_dir):
        try:
            entries.append((str(path), path.stat().st_mtime_ns))
        except FileNotFoundError:
            continue
    return tuple(entries)


def _load_table(dkim_dir: Path) -> dict[str, tuple[DkimKey, ...]]:
    table: dict[str, list[DkimKey]] = {}
    for path in key_files(dkim_dir):
        try:
            key = read_key(path)
        except DkimError as e:
            # One bad file must not stop the other domains' signing.
            log.error(_event(None, result="bad-key", error=str(e)))
            continue
        if key.algorithm == ED25519 and not _have_nacl():
            log.error(
                _event(
                    None,
                    result="bad-key",
                    error=f"{path}: Ed25519 signing needs PyNaCl, not installed",
                )
            )
            continue
        table.setdefault(key.domain, []).append(key)
    # RSA first: a verifier that stops at the first signature it can
    # check most likely knows RSA.
    return {
        domain: tuple(sorted(keys, key=lambda k: (k.algorithm != RSA, k.selector)))
        for domain, keys in table.items()
    }


def _have_nacl() -> bool:
    try:
        import nacl.signing  # noqa: F401
    except ImportError:
        return False
    return True


def _header_section(content: bytes) -> bytes:
    """The header fields, each line with its line end; no blank line."""
    if content.startswith((b"\r\n", b"\n")):
        return b""
    ends = [i for i in (content.find(b"\n\r\n"), content.find(b"\n\n")) if i >= 0]
    return content[: min(ends) + 1] if ends else content


def _from_domains(content: bytes) -> list[str]:
    """The domains of the From field's mailboxes, as A-labels, in order,
    each once. Only the first From field counts: a message with two is
    malformed (RFC 5322 §3.6 allows one), and dkimpy signs the last."""
    match = _FROM_FIELD.search(_header_section(content))
    if match is None:
        return []
    # 8-bit bytes in a display name must not stop us finding the address.
    value = match.group(1).decode("utf-8", "replace")
    value = re.sub(r"\r?\n(?=[ \t])", "", value).strip()
    domains: list[str] = []
    for _, address in email.utils.getaddresses([value]):
        _, at, domain = address.rpartition("@")
        if not at:
            continue
        try:
            name = normalize_domain(domain)
        except DkimError:
            continue
        if name not in domains:
            domains.append(name)
    return domains


def _fields_to_sign(headers: list[list[bytes]]) -> list[bytes]:
    """h= for a message with *headers*: each signed field as often as it
    occurs, From once more."""
    counts = Counter(name.lower() for name, _ in headers)
    fields: list[bytes] = []
    for name in SIGNED_FIELDS:
        times = counts[name] + (1 if name in _OVERSIGNED else 0)
        fields.extend([name] * times)
    return fields


def _line_ending(content: bytes) -> bytes:
    newline = content.find(b"\n")
    return b"\n" if newline > 0 and content[newline - 1] != 0x0D else b"\r\n"
