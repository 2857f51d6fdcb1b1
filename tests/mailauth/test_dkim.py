"""DKIM keys on disk and signatures that dkimpy's verifier accepts.

Verification uses ``dkim.verify`` with a ``dnsfunc`` that answers from
the keys the test made, so no DNS query leaves the process. Ed25519
signing and verifying need PyNaCl (dkimpy's optional dependency); those
tests are skipped where it is not installed.
"""

from __future__ import annotations

import base64
import logging
import re
import stat
from collections.abc import Callable
from pathlib import Path

import dkim
import dkim.util
import pytest

from postroom.mailauth import dkim as signing
from postroom.mailauth.dkim import DkimError, DkimKey, DkimSigner, KeyExists

MESSAGE = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: quarterly numbers\r\n"
    b"Date: Mon, 02 Mar 2026 10:00:00 +0000\r\n"
    b"Message-ID: <1@example.test>\r\n"
    b"X-Mailer: test\r\n"
    b"\r\n"
    b"Hello Bob,\r\n"
    b"\r\n"
    b"the numbers are in.\r\n"
)


def nacl_available() -> bool:
    try:
        import nacl.signing  # noqa: F401
    except ImportError:
        return False
    return True


ed25519_only = pytest.mark.skipif(
    not nacl_available(), reason="Ed25519 signing needs PyNaCl"
)


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One RSA and one Ed25519 key for example.test, made once: RSA
    key generation is the slow part of this module."""
    path = tmp_path_factory.mktemp("dkim")
    signing.generate_key(path, "example.test", "rsa1", signing.RSA, bits=1024)
    signing.generate_key(path, "example.test", "ed1", signing.ED25519)
    return path


def resolver(*keys: DkimKey) -> Callable[..., bytes | None]:
    """A dnsfunc for dkimpy that knows only *keys*' TXT records."""
    records = {f"{k.dns_name}.".encode(): k.txt_record().encode() for k in keys}

    def txt(name: bytes, timeout: float = 5) -> bytes | None:
        return records.get(name)

    return txt


def tags(signature_field: bytes) -> dict[bytes, bytes]:
    """The tags of a DKIM-Signature field (name and all)."""
    value = signature_field.split(b":", 1)[1]
    parsed: dict[bytes, bytes] = dkim.util.parse_tag_value(value)
    return parsed


def signature_fields(message: bytes) -> list[bytes]:
    """The DKIM-Signature fields at the top of *message*, unfolded."""
    headers, _ = dkim.rfc822_parse(message)
    return [name + b":" + value for name, value in headers if name == b"DKIM-Signature"]


def only(signer: DkimSigner, algorithm: str) -> DkimSigner:
    """A signer restricted to the key of one algorithm (shares key_dir)."""
    signer._refresh()
    signer._keys = {
        domain: tuple(k for k in keys if k.algorithm == algorithm)
        for domain, keys in signer._keys.items()
    }
    return signer


# -- keys ------------------------------------------------------------------------


def test_rsa_key_file_and_record(tmp_path: Path) -> None:
    key = signing.generate_key(tmp_path / "dkim", "Example.TEST.", bits=1024)

    assert (key.domain, key.selector, key.algorithm) == (
        "example.test",
        "postroom",
        "rsa-sha256",
    )
    assert key.path == tmp_path / "dkim" / "example.test" / "postroom.rsa"
    assert key.path.read_bytes().startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert stat.S_IMODE(key.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "dkim").stat().st_mode) == 0o700
    assert key.dns_name == "postroom._domainkey.example.test"
    assert key.txt_record() == f"v=DKIM1; k=rsa; p={key.public_key}"
    # dkimpy's own record parser accepts it.
    assert dkim.util.parse_tag_value(key.txt_record().encode())[b"k"] == b"rsa"
    assert [p.name for p in key.path.parent.iterdir()] == ["postroom.rsa"]


def test_ed25519_key_is_base64_of_32_raw_bytes(tmp_path: Path) -> None:
    key = signing.generate_key(tmp_path, "example.test", "ed", signing.ED25519)

    assert key.path.name == "ed.ed25519"
    raw = base64.b64decode(key.path.read_bytes().strip(), validate=True)
    assert len(raw) == 32
    assert len(base64.b64decode(key.public_key)) == 32
    assert key.txt_record() == f"v=DKIM1; k=ed25519; p={key.public_key}"
    assert stat.S_IMODE(key.path.stat().st_mode) == 0o600


def test_zone_line_splits_into_255_octet_strings(tmp_path: Path) -> None:
    key = signing.generate_key(tmp_path, "example.test", bits=2048)

    line = key.zone_line()
    assert line.startswith('postroom._domainkey.example.test. IN TXT ( "')
    assert line.endswith('" )') and "\n" not in line
    strings = re.findall(r'"([^"]*)"', line)
    assert [len(s) for s in strings] == [255, len(key.txt_record()) - 255]
    assert "".join(strings) == key.txt_record()


def test_existing_key_is_kept_without_force(tmp_path: Path) -> None:
    first = signing.generate_key(tmp_path, "example.test", "s1", signing.ED25519)

    with pytest.raises(KeyExists) as caught:
        signing.generate_key(tmp_path, "example.test", "s1", signing.ED25519)
    assert caught.value.path == first.path
    # Same selector, other algorithm: still the same DNS name, refused.
    with pytest.raises(KeyExists):
        signing.generate_key(tmp_path, "example.test", "S1", signing.RSA, bits=1024)
    assert signing.load_key(tmp_path, "example.test", "s1") == first


def test_force_replaces_the_key(tmp_path: Path) -> None:
    first = signing.generate_key(tmp_path, "example.test", "s1", signing.ED25519)
    second = signing.generate_key(
        tmp_path, "example.test", "s1", signing.ED25519, force=True
    )
    assert second.public_key != first.public_key

    third = signing.generate_key(
        tmp_path, "example.test", "s1", signing.RSA, bits=1024, force=True
    )
    assert [p.name for p in third.path.parent.iterdir()] == ["s1.rsa"]
    assert signing.load_key(tmp_path, "example.test", "s1").algorithm == signing.RSA


@pytest.mark.parametrize(
    ("domain", "selector", "algorithm", "bits", "complaint"),
    [
        ("localhost", "s", signing.RSA, 2048, "not a valid domain"),
        ("exa mple.test", "s", signing.RSA, 2048, "not a valid domain"),
        ("example.test", "../up", signing.RSA, 2048, "not a valid selector"),
        ("example.test", "a_b", signing.RSA, 2048, "not a valid selector"),
        ("example.test", "s", "rsa-sha1", 2048, "unknown algorithm"),
        ("example.test", "s", signing.RSA, 512, "from 1024 to 4096"),
    ],
)
def test_bad_requests_are_refused(
    tmp_path: Path,
    domain: str,
    selector: str,
    algorithm: str,
    bits: int,
    complaint: str,
) -> None:
    with pytest.raises(DkimError, match=complaint):
        signing.generate_key(tmp_path, domain, selector, algorithm, bits)
    assert not any(tmp_path.iterdir())


def test_idn_domain_is_stored_as_a_label(tmp_path: Path) -> None:
    key = signing.generate_key(tmp_path, "Bücher.test", "ed", signing.ED25519)

    assert key.domain == "xn--bcher-kva.test"
    assert key.dns_name == "ed._domainkey.xn--bcher-kva.test"
    assert signing.load_key(tmp_path, "bücher.test", "ed") == key


def test_list_and_load(tmp_path: Path) -> None:
    b = signing.generate_key(tmp_path, "b.test", "one", signing.ED25519)
    a2 = signing.generate_key(tmp_path, "a.test", "two", signing.ED25519)
    a1 = signing.generate_key(tmp_path, "a.test", "one", signing.RSA, bits=1024)
    (tmp_path / "a.test" / ".x.tmp").write_bytes(b"half-written")
    (tmp_path / "a.test" / "README").write_text("not a key")

    assert signing.list_keys(tmp_path) == [a1, a2, b]
    assert signing.list_keys(tmp_path / "missing") == []
    missing = re.escape("no DKIM key for nope._domainkey.a.test")
    with pytest.raises(DkimError, match=missing):
        signing.load_key(tmp_path, "a.test", "nope")


def test_a_broken_key_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "example.test").mkdir()
    (tmp_path / "example.test" / "bad.ed25519").write_bytes(b"not base64!\n")
    (tmp_path / "example.test" / "bad2.rsa").write_bytes(b"garbage")

    with pytest.raises(DkimError, match="not an Ed25519 key"):
        signing.load_key(tmp_path, "example.test", "bad")
    with pytest.raises(DkimError, match="not an unencrypted PEM private key"):
        signing.load_key(tmp_path, "example.test", "bad2")


# -- signing ---------------------------------------------------------------------


def test_rsa_signature_verifies(key_dir: Path) -> None:
    signer = only(DkimSigner(key_dir), signing.RSA)

    signed = signer.sign(MESSAGE)

    assert signed.endswith(MESSAGE)
    (field,) = signature_fields(signed)
    sig = tags(field)
    assert (sig[b"a"], sig[b"d"], sig[b"s"], sig[b"c"]) == (
        b"rsa-sha256",
        b"example.test",
        b"rsa1",
        b"relaxed/relaxed",
    )
    assert b"l" not in sig and b"x" not in sig
    key = signing.load_key(key_dir, "example.test", "rsa1")
    assert dkim.verify(signed, dnsfunc=resolver(key))


@ed25519_only
def test_ed25519_signature_verifies(key_dir: Path) -> None:
    signer = only(DkimSigner(key_dir), signing.ED25519)

    signed = signer.sign(MESSAGE)

    (field,) = signature_fields(signed)
    assert tags(field)[b"a"] == b"ed25519-sha256"
    key = signing.load_key(key_dir, "example.test", "ed1")
    assert dkim.verify(signed, dnsfunc=resolver(key))


@ed25519_only
def test_both_keys_give_two_signatures(key_dir: Path) -> None:
    signed = DkimSigner(key_dir).sign(MESSAGE)

    fields = signature_fields(signed)
    assert [tags(f)[b"a"] for f in fields] == [b"rsa-sha256", b"ed25519-sha256"]
    dns = resolver(*signing.list_keys(key_dir))
    verifier = dkim.DKIM(signed)
    assert verifier.verify(idx=0, dnsfunc=dns)
    assert verifier.verify(idx=1, dnsfunc=dns)


def test_signed_fields_are_those_present_and_from_twice(key_dir: Path) -> None:
    signed = only(DkimSigner(key_dir), signing.RSA).sign(MESSAGE)

    (field,) = signature_fields(signed)
    listed = [h.strip() for h in tags(field)[b"h"].split(b":")]
    assert listed == [
        b"from",
        b"from",
        b"to",
        b"subject",
        b"date",
        b"message-id",
    ]


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda m: m.replace(b"are in", b"are out"), id="body"),
        pytest.param(lambda m: m.replace(b"quarterly", b"yearly"), id="subject"),
        pytest.param(lambda m: m + b"P.S. appended\r\n", id="appended"),
        pytest.param(
            lambda m: m.replace(b"\r\n\r\n", b"\r\nFrom: ceo@example.test\r\n\r\n", 1),
            id="second-from",
        ),
    ],
)
def test_tampering_breaks_the_signature(
    key_dir: Path, tamper: Callable[[bytes], bytes]
) -> None:
    signed = only(DkimSigner(key_dir), signing.RSA).sign(MESSAGE)
    key = signing.load_key(key_dir, "example.test", "rsa1")
    assert dkim.verify(signed, dnsfunc=resolver(key))

    assert not dkim.verify(tamper(signed), dnsfunc=resolver(key))


def test_relaxed_canonicalization_survives_refolding(key_dir: Path) -> None:
    signed = only(DkimSigner(key_dir), signing.RSA).sign(MESSAGE)
    refolded = signed.replace(b"Subject: quarterly", b"Subject:  quarterly\r\n\t")
    key = signing.load_key(key_dir, "example.test", "rsa1")

    assert dkim.verify(refolded, dnsfunc=resolver(key))


@pytest.mark.parametrize(
    "sender",
    [
        b"bob@example.net",
        b"alice@sub.example.test",  # exact domain only, no parent
        b"undisclosed-recipients:;",
        b"alice",
    ],
)
def test_no_key_for_the_from_domain_leaves_the_message_alone(
    key_dir: Path, sender: bytes
) -> None:
    message = MESSAGE.replace(b"Alice <alice@example.test>", sender)

    assert DkimSigner(key_dir).sign(message) == message


def test_no_from_or_no_keys_leaves_the_message_alone(
    key_dir: Path, tmp_path: Path
) -> None:
    headless = b"Subject: no from\r\n\r\nbody\r\n"
    assert DkimSigner(key_dir).sign(headless) == headless
    assert DkimSigner(tmp_path / "none").sign(MESSAGE) == MESSAGE
    assert DkimSigner(key_dir).sign(b"") == b""


def test_a_from_line_in_the_body_does_not_count(key_dir: Path) -> None:
    message = b"Subject: x\r\n\r\nFrom: alice@example.test\r\n"

    assert DkimSigner(key_dir).sign(message) == message


@pytest.mark.parametrize(
    "from_field",
    [
        b"From: ALICE@EXAMPLE.TEST",
        b'FROM:\r\n  "Smith, Alice" <alice@Example.Test.>',
        b"From: Bob <bob@example.net>, Alice <alice@example.test>",
    ],
)
def test_from_domain_case_folding_and_lists(key_dir: Path, from_field: bytes) -> None:
    message = MESSAGE.replace(b"From: Alice <alice@example.test>", from_field)
    signed = only(DkimSigner(key_dir), signing.RSA).sign(message)

    (field,) = signature_fields(signed)
    assert tags(field)[b"d"] == b"example.test"
    key = signing.load_key(key_dir, "example.test", "rsa1")
    assert dkim.verify(signed, dnsfunc=resolver(key))


@ed25519_only
def test_idn_from_domain_signs_with_the_a_label_key(tmp_path: Path) -> None:
    key = signing.generate_key(tmp_path, "bücher.test", "ed", signing.ED25519)
    message = (
        "From: Jörg <jörg@BÜCHER.test>\r\nSubject: Grüße\r\n\r\nÄpfel\r\n"
    ).encode()

    signed = DkimSigner(tmp_path).sign(message)

    (field,) = signature_fields(signed)
    assert tags(field)[b"d"] == b"xn--bcher-kva.test"
    assert dkim.verify(signed, dnsfunc=resolver(key))


def test_eight_bit_and_lf_only_messages_verify(key_dir: Path) -> None:
    key = signing.load_key(key_dir, "example.test", "rsa1")
    signer = only(DkimSigner(key_dir), signing.RSA)
    eight_bit = MESSAGE.replace(b"Hello", "Grüß dich, \xff".encode("latin-1"))
    lf_only = MESSAGE.replace(b"\r\n", b"\n")

    for message in (eight_bit, lf_only):
        signed = signer.sign(message)
        assert signed != message and dkim.verify(signed, dnsfunc=resolver(key))
    # The added field keeps the message's own line ends.
    signed_lf = signer.sign(lf_only)
    assert b"\r" not in signed_lf


@pytest.mark.parametrize(
    "message",
    [
        b"From: alice@example.test\r\nno colon here\r\n\r\nbody\r\n",
        b" continued\r\nFrom: alice@example.test\r\n\r\nbody\r\n",
        b"From : alice@example.test\r\n\r\nbody\r\n",
    ],
    ids=["no-colon", "leading-continuation", "space-before-colon"],
)
def test_unparsable_header_is_left_unsigned(
    key_dir: Path, caplog: pytest.LogCaptureFixture, message: bytes
) -> None:
    with caplog.at_level(logging.WARNING, "postroom.mailauth.dkim"):
        assert DkimSigner(key_dir).sign(message, queue_id="0QK4W7ZJ2PM3B") == message
    assert caplog.messages[0].startswith("0QK4W7ZJ2PM3B: dkim result=unsigned")


def test_new_keys_are_picked_up_after_the_rescan_interval(tmp_path: Path) -> None:
    now = [0.0]
    signer = DkimSigner(tmp_path, rescan_interval=60, clock=lambda: now[0])
    assert signer.sign(MESSAGE) == MESSAGE

    signing.generate_key(tmp_path, "example.test", "s", signing.RSA, bits=1024)
    now[0] = 59.0
    assert signer.sign(MESSAGE) == MESSAGE
    now[0] = 61.0
    assert signer.sign(MESSAGE) != MESSAGE

    signer.reload()
    assert [k.selector for k in signer.keys_for("example.test")] == ["s"]


def test_a_bad_key_file_does_not_stop_the_others(
    key_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    signing.generate_key(tmp_path, "example.test", "good", signing.RSA, bits=1024)
    (tmp_path / "example.test" / "bad.rsa").write_bytes(b"garbage")

    with caplog.at_level(logging.ERROR, "postroom.mailauth.dkim"):
        keys = DkimSigner(tmp_path).keys_for("example.test")
    assert [k.selector for k in keys] == ["good"]
    assert "result=bad-key" in caplog.text
