"""Rendering a compiled version: sandbox, escaping, missing data,
substitutions, the generated text part and CSS inlining."""

from __future__ import annotations

import pytest

from postroom.campaigns import rendering, textpart
from postroom.campaigns.rendering import compile_version
from postroom.errors import TemplateError


def render(
    html: str,
    data: dict[str, object] | None = None,
    *,
    subject: str = "s",
    text: str | None = "",
    substitutions: dict[str, str] | None = None,
) -> rendering.Rendered:
    version = compile_version("template d-1 version v (v1)", subject, html, text)
    return version.render(data, substitutions)


# Published Jinja2 sandbox escapes and their relatives: each must stop
# with a TemplateError, never render.
ESCAPES = [
    "{{ ''.__class__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''.__class__.mro() }}",
    "{{ x.__init__.__globals__ }}",
    "{{ x|attr('__class__') }}",
    "{{ ''['__class__'] }}",
    "{{ '{0.__class__}'.format(1) }}",
    # Jinja2 3.1.5 and 3.1.6 closed these two (CVE-2024-56326,
    # CVE-2025-27516); pyproject.toml requires 3.1.6 for that reason.
    "{{ '{0.__class__}'|attr('format')(1) }}",
    "{% set f = '{0.__class__}'.format %}{{ f(1) }}",
    "{{ self.__init__ }}",
    "{{ range.__name__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ xs.append(1) }}",  # the data is shared between recipients
    "{{ d.update(a=1) }}",
    "{{ missing.__class__ }}",
]


@pytest.mark.parametrize("source", ESCAPES)
def test_sandbox_refuses_python_internals(source: str) -> None:
    data = {"x": object(), "xs": [1], "d": {}}
    with pytest.raises(TemplateError) as info:
        render(source, data)
    message = str(info.value)
    assert message.startswith("template d-1 version v (v1), html part, line 1:")
    assert "unsafe" in message or "SecurityError" in message


def test_sandbox_applies_to_subject_and_text() -> None:
    with pytest.raises(TemplateError, match="subject part, line 1: refused"):
        render("x", subject="{{ ''.__class__ }}")
    with pytest.raises(TemplateError, match="text part, line 2: refused"):
        render("x", text="ok\n{{ ''.__class__ }}")


def test_autoescape_in_html_not_in_text_or_subject() -> None:
    data = {"name": "<Tom & \"Jerry\">"}
    r = render("<p>{{ name }}</p>", data, subject="Hi {{ name }}",
               text="Hi {{ name }}")
    assert r.html == "<p>&lt;Tom &amp; &#34;Jerry&#34;&gt;</p>"
    assert r.text == 'Hi <Tom & "Jerry">'
    assert r.subject == 'Hi <Tom & "Jerry">'


def test_subject_cannot_inject_header_fields() -> None:
    r = render("x", {"n": "a\r\nBcc: evil@example.net"}, subject="Hi {{ n }}")
    assert r.subject == "Hi a Bcc: evil@example.net"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("[{{ name }}]", "[]"),
        ("[{{ user.address.city }}]", "[]"),
        ("[{{ user['x'].y }}]", "[]"),
        ("[{{ none_value }}]", "[]"),
        ("[{{ count + 1 }}]", "[]"),
        ("[{{ missing() }}]", "[]"),
        ("[{{ name|upper }}]", "[]"),
        ("[{% if count > 3 %}big{% endif %}]", "[]"),
        ("[{% for x in items %}{{ x }}{% endfor %}]", "[]"),
        ("[{{{ raw }}}]", "[]"),
    ],
)
def test_missing_data_renders_empty(source: str, expected: str) -> None:
    assert render(source, {"none_value": None}).html == expected


def test_bad_data_is_an_error_with_its_line() -> None:
    with pytest.raises(TemplateError) as info:
        render("one\ntwo\n{{ n + 1 }}", {"n": "text"})
    assert str(info.value).startswith(
        "template d-1 version v (v1), html part, line 3: TypeError:"
    )


def test_syntax_error_names_template_part_and_line() -> None:
    with pytest.raises(TemplateError) as info:
        compile_version("template d-9", "s", "a\nb\n{% if x %}", "")
    assert str(info.value).startswith("template d-9, html part, line 3: ")
    with pytest.raises(TemplateError, match="template d-9, subject part, line 1"):
        compile_version("template d-9", "{{ x", "<p></p>", None)


def test_legacy_substitutions_are_plain_replacement() -> None:
    subs = {"-name-": "Ann & Bo", "-name_full-": "Ann Smith", "-x-": "-name-"}
    r = render("<p>-name- -name_full- -x-</p>", subject="Hi -name-",
               text="-name-", substitutions=subs)
    # Longest key first, one pass: -x-'s value is not substituted again,
    # and values are not escaped (SendGrid's behaviour).
    assert r.html == "<p>Ann & Bo Ann Smith -name-</p>"
    assert r.subject == "Hi Ann & Bo"
    assert r.text == "Ann & Bo"


def test_text_part_generated_from_html() -> None:
    html = (
        "<html><body><h1>Hello {{ first_name }}!</h1>"
        "<p>Tom &amp; Jerry {{ raw|safe }}</p>"
        "<ul>{% for i in items %}<li>{{ i }}</li>{% endfor %}</ul>"
        "<table>{% for r in rows %}<tr><td>{{ r.a }}</td><td>{{ r.b }}</td>"
        "</tr>{% endfor %}</table>"
        '<a href="{{ url }}">RSVP</a></body></html>'
    )
    data = {"first_name": "<Ann>", "raw": "<b>bold</b>", "items": ["a", "b"],
            "rows": [{"a": "x", "b": 1}], "url": "https://r.example/?a=1&b=2"}
    version = compile_version("t", "s", html, None)
    # The text template was derived once, not per message.
    assert version._text is not None
    text = version.render(data).text
    assert text.startswith("Hello <Ann>!\n\nTom & Jerry bold\n")
    assert "* a\n  * b\n" in text
    assert "x  1" in text
    assert "[RSVP](https://r.example/?a=1&b=2)" in text
    assert "\n\n\n" not in text
    assert "<" not in text.replace("<Ann>", "")


def test_text_part_falls_back_when_derivation_cannot_keep_shape() -> None:
    # A statement inside an attribute has no place in text: the version
    # converts each rendered message instead, still correct.
    html = '<p class="{% if vip %}vip{% endif %}">Hi {{ name }}</p>'
    version = compile_version("t", "s", html, None)
    assert version._text is None
    assert version.render({"name": "Ann"}).text == "Hi Ann\n"


def test_derive_refuses_reordered_tags() -> None:
    assert textpart.derive("<p>{{ a }}</p>{% if b %}x{% endif %}") is not None
    assert textpart.derive('<img alt="{% if b %}x{% endif %}">') is None
    assert textpart.derive("<p>&#123;&#123; x }}</p>") is None


def test_given_text_part_is_used_as_written() -> None:
    r = render("<p>html</p>", {"n": 1}, text="plain {{ n }}\n\n\n")
    assert r.text == "plain 1\n\n\n"


def test_css_inlined_into_style_attributes() -> None:
    html = (
        "<html><head><style>p { color: red } .btn { padding: 8px }"
        " @media (max-width: 600px) { p { color: blue } }</style>"
        '<link rel="stylesheet" href="http://192.0.2.1/x.css"></head>'
        '<body><p>a</p><a class="btn" href="#">b</a></body></html>'
    )
    r = render(html)
    assert '<p style="color: red;">a</p>' in r.html
    assert 'style="padding: 8px;"' in r.html
    # Media queries stay in a <style> (they cannot be inlined); the
    # remote stylesheet is never fetched (the test would hang or fail).
    assert "@media" in r.html
    assert "<style>p { color: red }" not in r.html


def test_html_without_style_is_left_as_rendered() -> None:
    assert render("<p>{{ a }}</p>", {"a": 1}).html == "<p>1</p>"


def test_compiled_version_renders_many_recipients_independently() -> None:
    version = compile_version("t", "Hi {{ n }}", "<p>{{ n }}</p>", None)
    shared = {"xs": [1]}
    out = [version.render({**shared, "n": i}) for i in range(3)]
    assert [r.subject for r in out] == ["Hi 0", "Hi 1", "Hi 2"]
    assert shared == {"xs": [1]}
