"""``postroom template ...`` end to end, through the CLI's main function
and once through the installed ``postroom`` entry point."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from postroom.cli import main as cli

HTML = """<html><head><style>h1 { color: red }</style></head><body>
<h1>Hello {{ first_name }}!</h1>
{{#each items}}<p>{{name}}</p>{{/each}}
{{#if vip}}<p>VIP</p>{{/if}}
</body></html>
"""


class Runner:
    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
        self.dir = tmp_path
        self.capsys = capsys
        self.config = tmp_path / "postroom.toml"
        self.config.write_text(f'data_dir = "{tmp_path / "data"}"\n')

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        status = cli.main(["-c", str(self.config), "template", *argv])
        out, err = self.capsys.readouterr()
        return status, out, err

    def ok(self, *argv: str) -> str:
        status, out, err = self(*argv)
        assert (status, err) == (0, ""), err
        return out

    def file(self, name: str, content: str) -> str:
        path = self.dir / name
        path.write_text(content)
        return str(path)


@pytest.fixture
def run(tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> Runner:
    monkeypatch.delenv("POSTROOM_CONFIG", raising=False)
    return Runner(tmp_path, capsys)


def test_create_version_preview_activate_delete(run: Runner) -> None:
    template_id = run.ok("create", "Spring invitation").strip()
    assert re.fullmatch(r"d-[0-9a-f]{32}", template_id)

    data = run.file("data.json", json.dumps(
        {"first_name": "Ann", "items": [{"name": "tea"}], "vip": True}))
    v1 = run.ok("version", "add", template_id, "--subject",
                "Hi {{first_name}}", "--html", run.file("a.html", HTML),
                "--test-data", data).strip()

    out = run.ok("preview", template_id)
    assert out.startswith("Subject: Hi Ann\n\n--- text/plain ---\nHello Ann!\n")
    assert "tea" in out and "VIP" in out
    assert '<h1 style="color: red;">Hello Ann!</h1>' in out

    other = run.file("other.json", '{"first_name": "Bo"}')
    out = run.ok("preview", template_id, "--data", other)
    assert "Subject: Hi Bo" in out and "VIP" not in out

    v2 = run.ok("version", "add", template_id, "--subject", "Second",
                "--html", run.file("b.html", "<p>two</p>"),
                "--text", run.file("b.txt", "two as text"), "--name",
                "plain").strip()
    out = run.ok("show", template_id)
    assert f"* {v1}" in out and f"  {v2}" in out and "plain  [text]" in out

    run.ok("activate", template_id, v2)
    assert "two as text" in run.ok("preview", template_id)
    listing = run.ok("list")
    assert listing.startswith(f"{template_id}    2  {v2}")
    assert listing.rstrip().endswith("Spring invitation")

    run.ok("version", "del", template_id, v1)
    run.ok("delete", template_id)
    assert run.ok("list") == ""


def test_errors_are_one_line(run: Runner) -> None:
    template_id = run.ok("create", "T").strip()
    html = run.file("ok.html", "<p>{{ a }}</p>")
    run.ok("version", "add", template_id, "--subject", "s", "--html", html)

    cases = [
        (("show", "d-nope"), "postroom: no such template: d-nope"),
        (("activate", template_id, "v-nope"),
         f"postroom: template {template_id} has no version v-nope"),
        (("preview", template_id, "--data", run.file("bad.json", "{bad")),
         "bad JSON at line 1 column 2"),
        (("preview", template_id, "--data", run.file("list.json", "[1]")),
         "expected a JSON object"),
        (("version", "add", template_id, "--subject", "s", "--html",
          run.file("bad.html", "<p>\n{% for x in %}\n</p>")),
         f"postroom: template {template_id}, html part, line 2: "),
        (("version", "add", template_id, "--subject", "s", "--html",
          run.file("hb.html", "{{#with a}}{{/with}}")),
         "line 1: unsupported Handlebars helper {{#with}}"),
        (("version", "add", template_id, "--subject", "s", "--html",
          str(run.dir / "missing.html")), "No such file or directory"),
        (("preview", template_id, "--data",
          run.file("evil.json", '{"a": 1}'), "--version", "x"),
         "has no version x"),
    ]
    for argv, words in cases:
        status, out, err = run(*argv)
        assert status == 1, argv
        assert out == ""
        assert words in err
        assert err.count("\n") == 1, err


def test_render_error_at_preview_names_template_and_line(run: Runner) -> None:
    template_id = run.ok("create", "T").strip()
    html = run.file("t.html", "<p>\n{{ n + 1 }}</p>")
    version = run.ok("version", "add", template_id, "--subject", "s",
                     "--html", html).strip()
    status, _, err = run("preview", template_id, "--data",
                         run.file("d.json", '{"n": "text"}'))
    assert status == 1
    assert err.startswith(
        f"postroom: template {template_id} version {version} (v1),"
        " html part, line 2: TypeError: ")


def test_entry_point_subprocess(tmp_path: Path) -> None:
    config = tmp_path / "postroom.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n')
    html = tmp_path / "a.html"
    html.write_text("<p>Hi {{ name }}</p>")
    env = {k: v for k, v in os.environ.items() if k != "POSTROOM_CONFIG"}
    postroom = Path(sys.executable).with_name("postroom")

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(postroom), "-c", str(config), "template", *argv],
            capture_output=True, text=True, env=env, timeout=60, check=False)

    created = run("create", "Hello")
    assert created.returncode == 0, created.stderr
    template_id = created.stdout.strip()
    added = run("version", "add", template_id, "--subject", "s",
                "--html", str(html))
    assert added.returncode == 0, added.stderr
    shown = run("preview", template_id)
    assert shown.returncode == 0, shown.stderr
    assert "<p>Hi </p>" in shown.stdout  # missing data renders empty
    missing = run("delete", "d-0")
    assert (missing.returncode, missing.stderr) == (
        1, "postroom: no such template: d-0\n")
