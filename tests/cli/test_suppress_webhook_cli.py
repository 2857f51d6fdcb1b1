"""``postroom suppress`` and ``postroom webhook``, in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from postroom.cli import main as cli_main
from postroom.cli.webhook import parse_time


def config_args(tmp_path: Path) -> list[str]:
    config = tmp_path / "postroom.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n')
    return ["-c", str(config)]


def test_suppress_add_list_remove(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = [*config_args(tmp_path), "suppress"]
    assert cli_main.main([*base, "add", "invalid", "Typo@Exampel.com",
                          "--reason", "typo"]) == 0
    assert cli_main.main([*base, "list", "--kind", "invalid"]) == 0
    out, _ = capsys.readouterr()
    assert "typo@exampel.com  invalid" in out and out.rstrip().endswith("typo")

    # A group list needs --group, and an existing group.
    assert cli_main.main([*base, "add", "group_unsubscribe", "a@example.net"]) == 1
    assert cli_main.main([*base, "add", "group_unsubscribe", "a@example.net",
                          "--group", "9"]) == 1
    assert "no unsubscribe group 9" in capsys.readouterr().err

    assert cli_main.main([*base, "remove", "invalid", "typo@exampel.com"]) == 0
    assert cli_main.main([*base, "remove", "invalid", "typo@exampel.com"]) == 1
    assert cli_main.main([*base, "list"]) == 0
    assert capsys.readouterr().out == ""


def test_webhook_add_list_replay_remove(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = [*config_args(tmp_path), "webhook"]
    assert cli_main.main([*base, "add", "http://127.0.0.1:9/hook",
                          "--kind", "bounce"]) == 0
    hook_id, secret = capsys.readouterr().out.split()
    assert len(secret) == 64

    assert cli_main.main([*base, "list"]) == 0
    out = capsys.readouterr().out
    assert f"{hook_id}  enabled  bounce" in out and secret not in out
    assert cli_main.main([*base, "list", "--secrets"]) == 0
    assert secret in capsys.readouterr().out

    assert cli_main.main([*base, "replay", "--from", "2026-12-04T00:00:00Z",
                          "--to", "2026-12-05T00:00:00"]) == 0
    assert "replays queued: 1" in capsys.readouterr().out
    assert cli_main.main([*base, "replay", "--from", "10", "--to", "5"]) == 1
    assert cli_main.main([*base, "add", "ftp://nowhere/"]) == 1

    assert cli_main.main([*base, "remove", hook_id]) == 0
    assert cli_main.main([*base, "remove", hook_id]) == 1


def test_times_are_epoch_or_iso_8601_in_utc() -> None:
    assert parse_time("1800000000") == 1_800_000_000
    assert parse_time("2027-01-15T08:00:00Z") == 1_800_000_000
    assert parse_time("2027-01-15T08:00:00") == 1_800_000_000
    assert parse_time("2027-01-15T09:00:00+01:00") == 1_800_000_000
