"""Signed link tokens: the round trip, every kind of tampering,
expiry, purpose, and the node secret made once."""

from __future__ import annotations

import base64
import os
import threading
from pathlib import Path

import pytest

from postroom.campaigns import tokens

SECRET = bytes(range(32))
NOW = 1_800_000_000


def test_a_token_carries_its_subject_until_it_expires() -> None:
    token = tokens.sign(SECRET, "confirm", "c-1", NOW + 60)
    assert tokens.verify(SECRET, "confirm", token, NOW) == "c-1"
    assert tokens.verify(SECRET, "confirm", token, NOW + 60) == "c-1"
    with pytest.raises(tokens.ExpiredToken):
        tokens.verify(SECRET, "confirm", token, NOW + 61)


def flip(text: str, at: int) -> str:
    swapped = "A" if text[at] != "A" else "B"
    return text[:at] + swapped + text[at + 1:]


def test_any_change_is_refused_as_bad_not_expired() -> None:
    token = tokens.sign(SECRET, "confirm", "c-1", NOW + 60)
    payload, mac = token.split(".")
    forged_payload = base64.urlsafe_b64encode(
        f"confirm:c-2:{NOW + 60}".encode()).decode().rstrip("=")
    later = base64.urlsafe_b64encode(
        f"confirm:c-1:{NOW + 10**6}".encode()).decode().rstrip("=")
    bad = [
        flip(token, 0), flip(token, len(payload) + 2), token[:-1],
        f"{forged_payload}.{mac}", f"{later}.{mac}", payload, "",
        ".", f"{payload}.{mac}.x", "é" + token, "x" * 600,
        tokens.sign(bytes(32), "confirm", "c-1", NOW + 60),  # another node
    ]
    for candidate in bad:
        with pytest.raises(tokens.BadToken) as caught:
            tokens.verify(SECRET, "confirm", candidate, NOW)
        assert not isinstance(caught.value, tokens.ExpiredToken), candidate


def test_a_token_for_another_purpose_is_refused() -> None:
    token = tokens.sign(SECRET, "unsubscribe", "c-1", NOW + 60)
    with pytest.raises(tokens.BadToken, match="another purpose"):
        tokens.verify(SECRET, "confirm", token, NOW)


def test_the_node_secret_is_made_once_and_kept_private(tmp_path: Path) -> None:
    results: list[bytes] = []
    threads = [threading.Thread(
        target=lambda: results.append(tokens.node_secret(tmp_path / "d")))
        for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(results[0]) == 32
    path = tmp_path / "d" / tokens.SECRET_NAME
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert tokens.node_secret(tmp_path / "d") == results[0]
