"""``postroom contacts ...`` and ``postroom list ...`` through the
CLI's main function: import with refused rows, export to a file and to
standard output, lists, fields, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from postroom.cli import main as cli


class Runner:
    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
        self.dir = tmp_path
        self.capsys = capsys
        self.config = tmp_path / "postroom.toml"
        self.config.write_text(f'data_dir = "{tmp_path / "data"}"\n')

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        status = cli.main(["-c", str(self.config), *argv])
        out, err = self.capsys.readouterr()
        return status, out, err

    def ok(self, *argv: str) -> str:
        status, out, err = self(*argv)
        assert status == 0, err
        return out


@pytest.fixture
def run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Runner:
    return Runner(tmp_path, capsys)


def test_import_export_round_trip_with_a_list(run: Runner) -> None:
    run.ok("contacts", "field", "add", "city", "text")
    assert run.ok("contacts", "field", "list") == "city  text\n"
    list_id = run.ok("list", "create", "news").strip()
    source = run.dir / "in.csv"
    source.write_text("\ufeffEmail,First_Name,city\n"
                      "ann@example.net,Ann,Basel\n"
                      "bad@,B,\n"
                      "bob@example.net,Bob,Bern\n", encoding="utf-8")
    status, out, err = run("contacts", "import", str(source), "--list", "news")
    assert status == 1
    assert out == "2 created, 0 updated, 1 refused\n"
    assert err == f"{source}:3: email: not an email address: 'bad@'\n"
    assert run.ok("list", "list") == f"{list_id}        2  news\n"

    target = run.dir / "out.csv"
    status, _, err = run("contacts", "export", "--list", list_id, str(target))
    assert status == 0 and err.endswith("2 exported\n")
    exported = target.read_text()
    assert exported.splitlines()[1].startswith(
        "ann@example.net,Ann,,unverified,Basel,")
    assert run.ok("contacts", "export") == exported  # stdout, all contacts

    status, out, _ = run("contacts", "import", str(target))
    assert (status, out) == (0, "0 created, 2 updated, 0 refused\n")
    listed = run.ok("contacts", "list", "--list", "news", "--status",
                    "unverified").splitlines()
    assert [line.split()[2:] for line in listed] == [
        ["ann@example.net", "Ann"], ["bob@example.net", "Bob"]]

    run.ok("list", "delete", "news")
    assert run.ok("list", "list") == ""
    assert len(run.ok("contacts", "list").splitlines()) == 2


def test_errors_are_one_line(run: Runner) -> None:
    missing = run.dir / "missing.csv"
    cases = [
        (("contacts", "import", str(missing)), "No such file"),
        (("contacts", "export", "--list", "nope"), "no such list: nope"),
        (("list", "delete", "nope"), "no such list: nope"),
        (("contacts", "verify"), "name addresses or --list"),
        (("contacts", "verify", "who@example.net"), "no such contact"),
        (("contacts", "field", "add", "email", "text"), "bad field name"),
    ]
    for argv, words in cases:
        status, _, err = run(*argv)
        assert status == 1, argv
        assert err.startswith("postroom: ") and words in err, err
        assert err.count("\n") == 1, err
    bad_header = run.dir / "bad.csv"
    bad_header.write_text("mail,name\nx@example.net,X\n")
    status, _, err = run("contacts", "import", str(bad_header))
    assert (status, err) == (
        1, "postroom: line 1: the header has no email column\n")
    latin = run.dir / "latin.csv"
    latin.write_bytes(b"email,first_name\nj@example.net,J\xe9r\xf4me\n")
    status, _, err = run("contacts", "import", str(latin))
    assert (status, err) == (1, f"postroom: {latin}: not UTF-8 text\n")
