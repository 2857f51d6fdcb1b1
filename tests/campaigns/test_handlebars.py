"""The Handlebars subset, translated and rendered; everything else refused."""

from __future__ import annotations

import pytest

from postroom.campaigns import handlebars
from postroom.campaigns.rendering import compile_version
from postroom.errors import TemplateError


def html(source: str, data: dict[str, object]) -> str:
    return compile_version("t", "s", source, "").render(data).html


# (source, data, expected HTML): one row per construct.
RENDERED = [
    ("{{name}}", {"name": "Ann"}, "Ann"),
    ("{{ first_name }}", {"first_name": "Ann"}, "Ann"),
    ("{{{raw}}}", {"raw": "<b>x</b>"}, "<b>x</b>"),
    ("{{raw}}", {"raw": "<b>x</b>"}, "&lt;b&gt;x&lt;/b&gt;"),
    ("{{#if vip}}yes{{/if}}", {"vip": True}, "yes"),
    ("{{#if vip}}yes{{else}}no{{/if}}", {"vip": False}, "no"),
    ("{{#if vip}}yes{{else}}no{{/if}}", {}, "no"),
    ("{{#unless vip}}plain{{/unless}}", {"vip": False}, "plain"),
    ("{{#each xs}}[{{this}}]{{/each}}", {"xs": [1, 2]}, "[1][2]"),
    ("{{#each xs}}{{name}},{{/each}}", {"xs": [{"name": "a"}, {"name": "b"}]},
     "a,b,"),
    ("{{#each xs}}{{this.name}}{{/each}}", {"xs": [{"name": "a"}]}, "a"),
    ("{{#each xs}}{{@index}}{{#if @first}}F{{/if}}{{#if @last}}L{{/if}}"
     "{{/each}}", {"xs": "ab"}, "0F1L"),
    ("{{#each xs}}{{../title}}{{@root.title}}{{/each}}",
     {"xs": [1], "title": "T"}, "TT"),
    ("{{#each xs}}{{#each ys}}{{this}}{{../n}}{{/each}}{{/each}}",
     {"xs": [{"n": 1, "ys": ["a", "b"]}]}, "a1b1"),
    ("{{#each xs}}x{{else}}empty{{/each}}", {"xs": []}, "empty"),
    ("{{#each missing}}x{{/each}}", {}, ""),
    ("a{{! a comment }}b", {}, "ab"),
    ("a {{~#if x~}} b {{~/if~}} c", {"x": 1}, "abc"),
    ("a {{~name}} b", {"name": "N"}, "aN b"),
    ("a {{~ name|upper ~}} b", {"name": "n"}, "aNb"),
    ('{{insert name "default=it\'s you"}}', {}, "it&#39;s you"),
    ('{{insert name "default=there"}}', {"name": "Ann"}, "Ann"),
    ("{{insert name}}", {}, ""),
    ('{{#each xs}}{{insert n "default=?"}}{{/each}}', {"xs": [{"n": 1}, {}]},
     "1?"),
    # Jinja2 syntax mixes in and keeps its meaning.
    ("{{#if a}}{{ a|upper }}{% if b %}B{% endif %}{{/if}}",
     {"a": "x", "b": 1}, "XB"),
]


@pytest.mark.parametrize(("source", "data", "expected"), RENDERED)
def test_subset_renders(source: str, data: dict[str, object], expected: str) -> None:
    assert html(source, data) == expected


def test_pure_jinja_is_left_alone() -> None:
    source = "{% for x in xs %}{{ x }}{% endfor %} {{ this }}"
    assert handlebars.translate(source) == source


# (source, words the one-line error must contain)
REFUSED = [
    ("{{#with person}}{{name}}{{/with}}", "line 1: unsupported Handlebars helper"),
    ("{{#equals a 'b'}}x{{/equals}}", "unsupported Handlebars helper"),
    ('{{formatDate ts "YYYY"}}', "line 1: unsupported SendGrid helper"),
    ("a\n{{> partial}}", "line 2: unsupported Handlebars syntax"),
    ("{{#if a}}\n{{#each b}}\n", "line 2: {{#each}} is never closed"),
    ("{{#if a}}x{{/each}}", "{{/each}} closes {{#if}} of line 1"),
    ("x\n\n{{/if}}", "line 3: {{/if}} closes no block"),
    ("{{else}}", "{{else}} outside a block"),
    ("{{#if (eq a b)}}x{{/if}}", "takes one name"),
    ("{{#each xs}}{{@key}}{{/each}}", "unsupported Handlebars variable @key"),
    ("{{this}}{{#if a}}{{/if}}", "{{this}} outside {{#each}}"),
    ("{{#each a}}{{#each b}}{{../@index}}{{/each}}{{/each}}",
     "../@index is not supported"),
    ("{{>\n  partial }}", "line 1: unsupported Handlebars syntax {{> partial}}"),
]


@pytest.mark.parametrize(("source", "words"), REFUSED)
def test_outside_the_subset_is_refused(source: str, words: str) -> None:
    with pytest.raises(TemplateError) as info:
        compile_version("template d-1", "s", source, "")
    assert words in str(info.value)
    assert str(info.value).startswith("template d-1, html part, line ")
    assert "\n" not in str(info.value)


def test_line_numbers_survive_translation() -> None:
    # A multi-line Handlebars tag before the error must not shift it.
    source = "{{#if\n a}}x{{/if}}\n{{! two\nlines }}\n{{ oops( }}"
    with pytest.raises(TemplateError, match=r"html part, line 5: "):
        compile_version("t", "s", source, "")
