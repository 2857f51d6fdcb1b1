"""The text/plain part of a version that has none: made from its HTML.

Converting HTML to text is the costly step of rendering (inscriptis
takes about 0.3 ms for a 2 KB message, Jinja2 about 13 us), so we do it
once per version, not once per recipient: ``derive`` converts the HTML
*template* into a text *template*. Every Jinja2 tag is first swapped for
a placeholder word that survives conversion, the HTML is converted, and
the tags are put back. The result is accepted only if the conversion
kept the template's shape:

- every statement tag (``{% ... %}``) comes out exactly once, and all
  tags come out in their original order, so blocks still nest as
  written. An expression (``{{ ... }}``) may be dropped: one in an
  ``src`` or ``class`` attribute has no place in text;
- no Jinja2 delimiter appears in the converted text itself (an entity
  like ``&#123;&#123;`` decodes to one).

When that fails (a ``{% if %}`` inside an attribute, a loop inside a
``<style>``) ``derive`` returns None and the renderer converts each
rendered message instead: slower, never wrong.

An expression written raw (``{{ x|safe }}``, Handlebars ``{{{ x }}}``)
carries HTML in the data; in the text template it becomes
``{{ x|html_to_text }}`` so the text part shows no markup.

Links are kept in Markdown's form, ``[RSVP](https://...)``, since a text
reader cannot click the word. Runs of blank lines that the placeholders
and block tags leave behind are squeezed by ``tidy`` after rendering.

Library: inscriptis (Apache-2.0, maintained, lays out tables and lists
as a reader expects). html2text was the alternative; it is GPL-3.0,
which an MIT project should not make a hard dependency.
"""

from __future__ import annotations

import re

from inscriptis import get_text
from inscriptis.css_profiles import CSS_PROFILES
from inscriptis.model.config import ParserConfig

# A word no message contains, so that inscriptis keeps it as text.
_MARK = "PRMTPLQ"
_PLACEHOLDER = re.compile(_MARK + r"(\d+)Z")

# Jinja2's default delimiters; comments render nothing and are dropped.
_TAG = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.S)
_DELIMITER = re.compile(r"\{\{|\{%|\{#")
_RAW_EXPR = re.compile(r"^\{\{(-?)(.*?)\|\s*safe\s*(-?)\}\}$", re.S)

_BLANK_LINES = re.compile(r"\n[ \t]*(?:\n[ \t]*){2,}")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")


def _config() -> ParserConfig:
    # "strict" follows CSS display rules closely (no extra blank lines
    # around inline elements), which is what a mail reader shows.
    return ParserConfig(css=CSS_PROFILES["strict"].copy(), display_links=True)


_CONFIG = _config()


def html_to_text(html: str) -> str:
    """The text a reader would see in *html*, tidied."""
    return tidy(get_text(html, _CONFIG))


def tidy(text: str) -> str:
    """Squeeze blank-line runs to one blank line; drop trailing spaces."""
    text = _TRAILING_SPACE.sub("\n", text)
    return _BLANK_LINES.sub("\n\n", text).strip() + "\n"


def derive(html_source: str) -> str | None:
    """A Jinja2 text template made from the Jinja2 HTML *html_source*,
    or None when conversion would not keep the template's shape."""
    if _MARK in html_source:
        return None

    # Swap each tag for a numbered placeholder word.
    tags: list[str] = []

    def protect(m: re.Match[str]) -> str:
        if m.group().startswith("{#"):
            return ""
        tags.append(m.group())
        return f"{_MARK}{len(tags) - 1}Z"

    protected = _TAG.sub(protect, html_source)
    protected = _ROW_LEVEL.sub(_as_rows, protected)
    protected = _CELL_LEVEL.sub(_as_cells, protected)
    text = get_text(protected, _CONFIG)
    if _DELIMITER.search(text):
        return None

    # Check the shape: order kept, every statement present once.
    found = [int(n) for n in _PLACEHOLDER.findall(text)]
    if found != sorted(set(found)):
        return None
    statements = {i for i, tag in enumerate(tags) if tag.startswith("{%")}
    if not statements <= set(found):
        return None

    def restore(m: re.Match[str]) -> str:
        tag = tags[int(m.group(1))]
        raw = _RAW_EXPR.match(tag)
        if raw:
            tag = "{{" + raw.group(1) + raw.group(2) + "|html_to_text "
            tag += raw.group(3) + "}}"
        return tag

    return _STATEMENT_LINE.sub(_join_line, _PLACEHOLDER.sub(restore, text))


# A tag between table rows (a loop over rows, say) is text the HTML
# parser would move out of the table, so the order check would fail; a
# row of its own keeps it in place. Likewise a tag between cells gets a
# cell of its own.
_PHS = _MARK + r"\d+Z(?:\s*" + _MARK + r"\d+Z)*"
_ROW_LEVEL = re.compile(
    r"(<(?:table|tbody|thead|tfoot)\b[^>]*>|</(?:tr|tbody|thead|tfoot)\s*>)"
    r"(\s*)(" + _PHS + r")(?=\s*<(?:tr|/table|/?tbody|/?thead|/?tfoot)\b)",
    re.I,
)
_CELL_LEVEL = re.compile(
    r"(<tr\b[^>]*>|</t[dh]\s*>)(\s*)(" + _PHS + r")(?=\s*<(?:t[dh]|/tr)\b)",
    re.I,
)


def _as_rows(m: re.Match[str]) -> str:
    rows = "".join(
        f"<tr><td>{ph}</td></tr>" for ph in re.findall(_MARK + r"\d+Z", m[3])
    )
    return m[1] + m[2] + rows


def _as_cells(m: re.Match[str]) -> str:
    cells = "".join(f"<td>{ph}</td>" for ph in re.findall(_MARK + r"\d+Z", m[3]))
    return m[1] + m[2] + cells


# A line holding only statement tags would render as a blank line per
# loop pass; the tags take no line of their own instead.
_STATEMENT_LINE = re.compile(r"(?m)^[ \t]*((?:\{%.*?%\}[ \t]*)+)\n")


def _join_line(m: re.Match[str]) -> str:
    return m[1].replace(" %} ", " %}").strip()
