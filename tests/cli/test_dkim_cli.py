"""``postroom dkim ...`` run through the real entry point, in process,
against a configuration whose data_dir is a temporary directory."""

from __future__ import annotations

import re
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from postroom.cli import main as cli
from postroom.mailauth import dkim

Run = Callable[..., tuple[int, str, str]]

RECORD_LINE = re.compile(
    r'^(?P<name>\S+\._domainkey\.\S+)\. IN TXT \( (?P<strings>(?:"[^"]*" ?)+)\)$'
)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def run(
    tmp_path: Path,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Run:
    """Runs ``postroom -c CONFIG dkim ARGV...``: (status, stdout, stderr)."""
    monkeypatch.delenv("POSTROOM_CONFIG", raising=False)
    monkeypatch.delenv("POSTROOM_DATA_DIR", raising=False)
    config = tmp_path / "postroom.toml"
    config.write_text(f'data_dir = "{data_dir}"\n')

    def run(*argv: str) -> tuple[int, str, str]:
        status = cli.main(["-c", str(config), "dkim", *argv])
        out, err = capsys.readouterr()
        return status, out, err

    return run


def record_of(line: str) -> tuple[str, str]:
    """The DNS name and the joined TXT text of a printed zone line."""
    match = RECORD_LINE.match(line)
    assert match, line
    strings = re.findall(r'"([^"]*)"', match["strings"])
    assert all(len(s) <= 255 for s in strings)
    return match["name"], "".join(strings)


def test_keygen_prints_the_record_and_where_the_key_is(
    run: Run, data_dir: Path
) -> None:
    status, out, err = run("keygen", "Example.TEST", "--bits", "1024")

    assert (status, err) == (0, "")
    line, note = out.splitlines()
    name, text = record_of(line)
    key = dkim.load_key(data_dir / "dkim", "example.test", "postroom")
    assert name == "postroom._domainkey.example.test"
    assert text == key.txt_record() and text.startswith("v=DKIM1; k=rsa; p=")
    assert note == f"; private key (rsa-sha256): {key.path}"
    assert stat.S_IMODE(key.path.stat().st_mode) == 0o600


def test_keygen_ed25519_with_selector(run: Run, data_dir: Path) -> None:
    status, out, _ = run(
        "keygen", "example.test", "--selector", "ed2026", "--algorithm", "ed25519"
    )

    assert status == 0
    name, text = record_of(out.splitlines()[0])
    assert name == "ed2026._domainkey.example.test"
    assert text.startswith("v=DKIM1; k=ed25519; p=")
    assert (data_dir / "dkim" / "example.test" / "ed2026.ed25519").exists()


def test_keygen_refuses_to_replace_without_force(run: Run) -> None:
    assert run("keygen", "example.test", "--algorithm", "ed25519")[0] == 0
    first = run("show", "example.test")[1]

    status, out, err = run("keygen", "example.test", "--algorithm", "ed25519")
    assert (status, out) == (1, "")
    assert err.startswith("postroom: a key for postroom._domainkey.example.test")
    assert "--force replaces it" in err and err.count("\n") == 1
    assert run("show", "example.test")[1] == first

    status, out, _ = run("keygen", "example.test", "--algorithm", "ed25519", "--force")
    assert status == 0
    assert run("show", "example.test")[1] == out.splitlines()[0] + "\n" != first


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (("keygen", "not a domain"), "postroom: not a valid domain"),
        (("keygen", "example.test", "--selector", "a/b"), "not a valid selector"),
        (("keygen", "example.test", "--bits", "100"), "from 1024 to 4096 bits"),
        (
            ("keygen", "example.test", "--algorithm", "ed25519", "--bits", "2048"),
            "--bits applies to rsa keys only",
        ),
        (("show", "example.test"), "postroom: no DKIM key for example.test"),
        (
            ("show", "example.test", "--selector", "x"),
            "no DKIM key for x._domainkey.example.test",
        ),
    ],
)
def test_errors_are_one_line(run: Run, argv: tuple[str, ...], complaint: str) -> None:
    status, out, err = run(*argv)

    assert (status, out) == (1, "")
    assert complaint in err and err.count("\n") == 1


def test_list_and_show(run: Run, data_dir: Path) -> None:
    assert run("list") == (0, "", "")
    run("keygen", "b.test", "--algorithm", "ed25519")
    run("keygen", "a.test", "--selector", "rsa1", "--bits", "1024")
    run("keygen", "a.test", "--selector", "ed1", "--algorithm", "ed25519")

    status, out, _ = run("list")
    assert status == 0
    rows = [line.split() for line in out.splitlines()]
    keys = data_dir / "dkim"
    assert rows == [
        ["a.test", "ed1", "ed25519-sha256", str(keys / "a.test" / "ed1.ed25519")],
        ["a.test", "rsa1", "rsa-sha256", str(keys / "a.test" / "rsa1.rsa")],
        ["b.test", "postroom", "ed25519-sha256", str(keys / "b.test/postroom.ed25519")],
    ]

    status, out, _ = run("show", "A.test")
    assert [record_of(line)[0] for line in out.splitlines()] == [
        "ed1._domainkey.a.test",
        "rsa1._domainkey.a.test",
    ]
    status, out, _ = run("show", "a.test", "--selector", "rsa1")
    assert record_of(out.strip()) == (
        "rsa1._domainkey.a.test",
        dkim.load_key(keys, "a.test", "rsa1").txt_record(),
    )


def test_list_reports_a_broken_key_and_shows_the_rest(run: Run, data_dir: Path) -> None:
    run("keygen", "a.test", "--algorithm", "ed25519")
    (data_dir / "dkim" / "a.test" / "broken.rsa").write_text("garbage")

    status, out, err = run("list")

    assert status == 1
    assert out.split()[:2] == ["a.test", "postroom"]
    assert err.startswith("postroom: ") and "broken.rsa" in err
