"""Signatures of webhook posts: what a receiver computes must match."""

from __future__ import annotations

import hashlib
import hmac

from postroom.webhooks import signing

SECRET = "0f" * 32
BODY = b'[{"email":"ann@example.net","event":"delivered"}]'
NOW = 1_800_000_000


def test_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    # What the documentation tells a receiver to compute, by hand.
    expected = hmac.new(
        SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256
    ).hexdigest()
    assert signing.sign(SECRET, NOW, BODY) == f"v1={expected}"


def test_verify_accepts_a_good_post() -> None:
    signature = signing.sign(SECRET, NOW, BODY)
    assert signing.verify(SECRET, str(NOW), BODY, signature, now=NOW + 10)


def test_verify_refuses_a_changed_body_wrong_secret_or_timestamp() -> None:
    signature = signing.sign(SECRET, NOW, BODY)
    assert not signing.verify(SECRET, str(NOW), BODY + b" ", signature, now=NOW)
    assert not signing.verify("ab" * 32, str(NOW), BODY, signature, now=NOW)
    assert not signing.verify(SECRET, str(NOW + 1), BODY, signature, now=NOW)
    assert not signing.verify(SECRET, "soon", BODY, signature, now=NOW)


def test_verify_refuses_an_old_post_replayed() -> None:
    signature = signing.sign(SECRET, NOW, BODY)
    late = NOW + signing.TOLERANCE + 1
    assert not signing.verify(SECRET, str(NOW), BODY, signature, now=late)


def test_verify_accepts_any_of_several_signatures() -> None:
    # While a secret is being rotated.
    good = signing.sign(SECRET, NOW, BODY)
    assert signing.verify(SECRET, str(NOW), BODY, f"v1=00, {good}", now=NOW)
