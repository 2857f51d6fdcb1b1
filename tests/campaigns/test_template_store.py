"""Templates and versions kept in the database: create, version,
activate, update, delete, render, preview, the compile cache."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from postroom.campaigns import templates
from postroom.errors import TemplateError, UnknownTemplate
from postroom.store import db


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = db.create_engine(f"sqlite:///{tmp_path / 'postroom.db'}")
    yield engine
    engine.dispose()


def test_template_id_has_sendgrids_form(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        t = templates.create_template(conn, " Invitation ")
    assert re.fullmatch(r"d-[0-9a-f]{32}", t.id)
    assert t.name == "Invitation"
    assert t.active_version_id is None


def test_first_version_is_active_and_renders(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        t = templates.create_template(conn, "Invitation")
        v1 = templates.add_version(conn, t.id, subject="Hi {{ name }}",
                                   html="<p>v1 {{ name }}</p>")
    assert v1.active and v1.name == "v1" and v1.text is None
    with engine.connect() as conn:
        r = templates.render(conn, t.id, {"name": "Ann"})
    assert (r.subject, r.html, r.text) == ("Hi Ann", "<p>v1 Ann</p>", "v1 Ann\n")


def test_activation_switches_the_rendered_version(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        t = templates.create_template(conn, "T")
        v1 = templates.add_version(conn, t.id, subject="s", html="one")
        v2 = templates.add_version(conn, t.id, subject="s", html="two",
                                   name="second")
        assert not v2.active
        assert templates.render(conn, t.id).html == "one"

        templates.activate_version(conn, t.id, v2.id)
        assert templates.render(conn, t.id).html == "two"
        listed = templates.list_versions(conn, t.id)
        assert [(v.id, v.name, v.active) for v in listed] == [
            (v1.id, "v1", False), (v2.id, "second", True)]

        v3 = templates.add_version(conn, t.id, subject="s", html="three",
                                   activate=True)
        assert templates.get_template(conn, t.id).active_version_id == v3.id


def test_update_version_is_seen_by_the_next_render(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        t = templates.create_template(conn, "T")
        v = templates.add_version(conn, t.id, subject="s", html="old")
        assert templates.render(conn, t.id).html == "old"
        templates.update_version(conn, t.id, v.id, html="new {{ a }}")
        # The cache is keyed by the sources, so the old compile is not
        # used however soon after the first render the update comes.
        assert templates.render(conn, t.id, {"a": 1}).html == "new 1"


def test_blank_text_part_means_generate(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        t = templates.create_template(conn, "T")
        v = templates.add_version(conn, t.id, subject="s",
                                  html="<p>from html</p>", text=" \n")
        assert v.text is None
        assert templates.render(conn, t.id).text == "from html\n"
        v = templates.update_version(conn, t.id, v.id, text="own")
        assert templates.render(conn, t.id).text == "own"


def test_compiled_versions_are_cached(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        t = templates.create_template(conn, "T")
        v = templates.add_version(conn, t.id, subject="s", html="x")
    assert templates.compiled(v) is templates.compiled(v)


def test_bad_versions_are_not_stored(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        t = templates.create_template(conn, "T")
        templates.add_version(conn, t.id, subject="s", html="good")
    for html, subject, words in [
        ("a\n{% if %}", "s", "html part, line 2"),
        ("x", "{{#with a}}{{/with}}", "subject part, line 1"),
        ("x", " ", "empty subject"),
        ("x", "s" * 256, "subject longer than 255"),
    ]:
        with engine.begin() as conn, pytest.raises(TemplateError, match=words):
            templates.add_version(conn, t.id, subject=subject, html=html)
    with engine.connect() as conn:
        assert len(templates.list_versions(conn, t.id)) == 1


def test_unknown_ids(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        t = templates.create_template(conn, "T")
        v = templates.add_version(conn, t.id, subject="s", html="x")
        with pytest.raises(UnknownTemplate, match="no such template: d-0"):
            templates.get_template(conn, "d-0")
        with pytest.raises(UnknownTemplate):
            templates.add_version(conn, "d-0", subject="s", html="x")
        with pytest.raises(UnknownTemplate, match="has no version nope"):
            templates.activate_version(conn, t.id, "nope")
        other = templates.create_template(conn, "Other")
        # A version of one template cannot be activated on another.
        with pytest.raises(UnknownTemplate):
            templates.activate_version(conn, other.id, v.id)
        with pytest.raises(TemplateError, match="has no active version"):
            templates.render(conn, other.id)


def test_delete_version_and_template(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        t = templates.create_template(conn, "T")
        v1 = templates.add_version(conn, t.id, subject="s", html="1")
        v2 = templates.add_version(conn, t.id, subject="s", html="2")
        with pytest.raises(TemplateError, match="active version"):
            templates.delete_version(conn, t.id, v1.id)
        templates.delete_version(conn, t.id, v2.id)
        assert [v.id for v in templates.list_versions(conn, t.id)] == [v1.id]

        templates.delete_template(conn, t.id)
        assert templates.list_templates(conn) == []
        left = conn.execute(sa.text("select count(*) from template_versions"))
        assert left.scalar() == 0
        with pytest.raises(UnknownTemplate):
            templates.delete_template(conn, t.id)


def test_preview_uses_test_data_or_given_data(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        t = templates.create_template(conn, "T")
        v1 = templates.add_version(conn, t.id, subject="Hi {{ n }}",
                                   html="<p>{{ n }}</p>",
                                   test_data={"n": "Sample"})
        templates.add_version(conn, t.id, subject="v2", html="x",
                              activate=True)
        assert templates.preview(conn, t.id, version_id=v1.id).subject == (
            "Hi Sample")
        assert templates.preview(conn, t.id, {"n": "Given"}, v1.id).html == (
            "<p>Given</p>")
        assert templates.preview(conn, t.id).subject == "v2"


def test_rename_template(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        t = templates.create_template(conn, "T")
        templates.update_template(conn, t.id, "Renamed")
        assert templates.get_template(conn, t.id).name == "Renamed"
        with pytest.raises(TemplateError, match="empty name"):
            templates.update_template(conn, t.id, "  ")
