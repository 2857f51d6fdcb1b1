"""The small Handlebars subset SendGrid users write, translated to Jinja2.

SendGrid's dynamic templates are Handlebars; ours render with Jinja2. A
plain ``{{ name }}`` means the same in both, so most templates need no
change. The block helpers people use most are translated here, once, at
compile time, into Jinja2 source that the sandbox then compiles:

    Handlebars                     Jinja2
    {{{ raw }}}                    {{ raw|safe }}       (no HTML escaping)
    {{#if x}} .. {{else}} .. {{/if}}
                                   {% if x %} .. {% else %} .. {% endif %}
    {{#unless x}} .. {{/unless}}   {% if not (x) %} .. {% endif %}
    {{#each xs}} .. {{else}} .. {{/each}}
                                   {% for _hb1 in xs %} .. {% else %} ..
                                   {% endfor %}
    {{! comment }}                 {# comment #}
    {{insert x "default=there"}}   {{ x or 'there' }}   (SendGrid's helper)
    {{~x~}}                        {{- x -}}            (trim whitespace)

Inside ``{{#each}}`` Handlebars changes the context to the item, so a
bare ``{{name}}`` there means the item's ``name``. The translation keeps
that meaning by rewriting paths: ``name`` and ``this.name`` become
``_hb1.name``, ``this`` becomes ``_hb1``, ``../name`` climbs one
context, ``@root.name`` is the top-level ``name``, and ``@index``,
``@first``, ``@last`` map onto Jinja's ``loop``. Only simple paths are
rewritten; anything else inside ``{{ }}`` is left as a Jinja2
expression, so the two syntaxes mix.

Anything else Handlebars-only (``{{#with}}``, partials ``{{> x}}``,
subexpressions, ``@key``, SendGrid's other helpers such as ``equals``
and ``formatDate``) raises ``TemplateError`` naming the line, rather
than rendering something subtly different. A source with no
Handlebars-only syntax is returned unchanged, so pure Jinja2 templates
pay nothing and keep their exact meaning.

Line numbers survive the translation (a tag that spans lines keeps its
newlines), so Jinja2's syntax errors point at the user's own line.

XXX: the scanner does not know about ``{% raw %}`` blocks or a ``}}``
inside a string literal; a Handlebars-looking tag there is translated
anyway. Both are unusual in mail, and the cost of a real Handlebars
parser is not justified for them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NoReturn

from postroom.errors import TemplateError

# Anything that can only be Handlebars: block open/close, else, comment,
# partial, inverse section, triple-stash, whitespace control.
_MARKERS = re.compile(
    r"\{\{\{|\{\{~|~\}\}|\{\{\s*(?:[#/!>^]|else\s*\}\}|"
    r"(?:insert|formatDate|equals|notEquals|greaterThan|lessThan|and|or"
    r"|length)\s+[\w@.\"'])"
)

# SendGrid's own helpers, written ``{{helper arg ...}}``: never valid
# Jinja2, so a name from this list followed by an argument is a call.
_SENDGRID_HELPERS = frozenset(
    {
        "insert", "formatDate", "equals", "notEquals", "greaterThan",
        "lessThan", "and", "or", "length",
    }
)
# {{insert name "default=there"}}
_INSERT = re.compile(r'insert\s+(\S+)(?:\s+"default=([^"]*)")?')

# One mustache: the triple form first so that ``{{{x}}}`` is not read as
# ``{{`` + ``{x}`` + ``}}``.
_MUSTACHE = re.compile(r"\{\{\{(?P<raw>.*?)\}\}\}|\{\{(?P<tag>.*?)\}\}", re.S)

# A Handlebars path: optional ``../`` steps, then ``this``, an @-variable
# or a name, then ``.segment``s.
_PATH = re.compile(r"(?:\.\./)*(?:this|@\w+|[A-Za-z_]\w*)(?:\.\w+)*")

SUPPORTED = "{{{raw}}}, #if, #unless, #each, else, {{! comment}}, insert"


@dataclass
class _Block:
    kind: str  # "if", "unless" or "each"
    line: int
    var: str | None  # the loop variable of an "each"


def translate(source: str) -> str:
    """Return *source* with its Handlebars subset rewritten as Jinja2.

    Raises TemplateError ("line N: ...") for Handlebars syntax outside
    the subset, a block closed by the wrong tag, or one never closed.
    """
    if not _MARKERS.search(source):
        return source
    return _Translator(source).run()


def _trim(inner: str, jinja: str) -> str:
    """Carry Handlebars' whitespace control (``{{~x~}}``) over to
    Jinja2's (``{{- x -}}``)."""
    if jinja.startswith("{#"):
        return jinja
    if inner.lstrip().startswith("~"):
        jinja = jinja[:2] + "-" + jinja[2:]
    if inner.rstrip().endswith("~"):
        jinja = jinja[:-2] + "-" + jinja[-2:]
    return jinja


class _Translator:
    def __init__(self, source: str) -> None:
        self.source = source
        self.blocks: list[_Block] = []
        self.line = 1

    def run(self) -> str:
        out: list[str] = []
        last_end = 0
        for m in _MUSTACHE.finditer(self.source):
            self.line += self.source.count("\n", last_end, m.start())
            out.append(self.source[last_end : m.start()])
            if m.group("raw") is not None:
                raw = m.group("raw")
                expr = self._expr(raw.strip().strip("~"))
                jinja = _trim(raw, "{{ " + expr + "|safe }}")
            else:
                jinja = _trim(m.group("tag"), self._tag(m.group("tag")))
            # Keep the tag's own newlines so that later lines keep their
            # numbers; Jinja2 allows newlines inside a tag.
            newlines = m.group().count("\n")
            missing = newlines - jinja.count("\n")
            if missing > 0:
                jinja = jinja[:-2] + "\n" * missing + jinja[-2:]
            out.append(jinja)
            self.line += newlines
            last_end = m.end()
        out.append(self.source[last_end:])
        if self.blocks:
            block = self.blocks[-1]
            raise TemplateError(
                f"line {block.line}: {{{{#{block.kind}}}}} is never closed"
            )
        return "".join(out)

    def _tag(self, inner: str) -> str:
        text = inner.strip().strip("~").strip()
        if text.startswith("!"):
            # ``{{!-- x --}}`` and ``{{! x }}``; Jinja comments may not
            # contain "#}", which Handlebars comments may.
            return "{#" + text[1:].replace("#}", "# }") + "#}"
        if text.startswith("#"):
            return self._open(text[1:])
        if text.startswith("/"):
            return self._close(text[1:].strip())
        if text == "else":
            if not self.blocks:
                self._fail("{{else}} outside a block")
            return "{% else %}"
        if text[:1] in (">", "^", "&"):
            self._fail(f"unsupported Handlebars syntax {{{{{text}}}}}")
        if _PATH.fullmatch(text):
            return "{{ " + self._expr(text) + " }}"
        words = text.split(None, 1)
        if len(words) == 2 and words[0] in _SENDGRID_HELPERS:
            return self._helper(text)
        # A Jinja2 expression (filters, operators, literals): leave it.
        return "{{ " + text + " }}"

    def _helper(self, text: str) -> str:
        # Of SendGrid's inline helpers only ``insert`` is cheap to get
        # exactly right: a value, or the default when it is missing.
        m = _INSERT.fullmatch(text)
        if m is None or not _PATH.fullmatch(m[1]):
            self._fail(
                f"unsupported SendGrid helper {{{{{text}}}}}"
                f" (supported: {SUPPORTED})"
            )
        expr = self._expr(m[1])
        if m[2] is None:
            return "{{ " + expr + " }}"
        default = m[2].replace("\\", "\\\\").replace("'", "\\'")
        return "{{ " + expr + " or '" + default + "' }}"

    def _open(self, text: str) -> str:
        words = text.split(None, 1)
        helper = words[0] if words else ""
        arg = words[1].strip() if len(words) > 1 else ""
        if helper not in ("if", "unless", "each"):
            self._fail(
                f"unsupported Handlebars helper {{{{#{helper}}}}}"
                f" (supported: {SUPPORTED})"
            )
        if not _PATH.fullmatch(arg):
            self._fail(f"{{{{#{helper}}}}} takes one name, not {arg!r}")
        expr = self._expr(arg)
        if helper == "each":
            var = f"_hb{sum(b.kind == 'each' for b in self.blocks) + 1}"
            self.blocks.append(_Block("each", self.line, var))
            return f"{{% for {var} in {expr} %}}"
        self.blocks.append(_Block(helper, self.line, None))
        if helper == "unless":
            return f"{{% if not ({expr}) %}}"
        return f"{{% if {expr} %}}"

    def _close(self, helper: str) -> str:
        if not self.blocks:
            self._fail(f"{{{{/{helper}}}}} closes no block")
        block = self.blocks.pop()
        if block.kind != helper:
            self._fail(
                f"{{{{/{helper}}}}} closes {{{{#{block.kind}}}}}"
                f" of line {block.line}"
            )
        return "{% endfor %}" if helper == "each" else "{% endif %}"

    def _expr(self, path: str) -> str:
        """A Handlebars path as a Jinja2 expression in the current context."""
        path = path.strip()
        if not _PATH.fullmatch(path):
            # Inside {{{ }}} a Jinja2 expression is allowed too.
            return path
        contexts = [b.var for b in self.blocks if b.var is not None]
        ups = 0
        while path.startswith("../"):
            path, ups = path[3:], ups + 1
        head, _, rest = path.partition(".")
        if head.startswith("@"):
            if ups:
                self._fail(f"../{head} is not supported")
            return self._data_variable(head, rest)
        if ups > len(contexts):
            self._fail("../ climbs above the top of the data")
        scope = contexts[: len(contexts) - ups]
        base = scope[-1] if scope else None
        if head == "this":
            if base is None:
                self._fail("{{this}} outside {{#each}}")
            return f"{base}.{rest}" if rest else str(base)
        return f"{base}.{path}" if base else path

    def _data_variable(self, head: str, rest: str) -> str:
        if head == "@root":
            if not rest:
                self._fail("@root alone is not supported")
            return rest
        loop_attr = {"@index": "index0", "@first": "first", "@last": "last"}
        if head not in loop_attr or rest:
            self._fail(f"unsupported Handlebars variable {head}")
        if not any(b.kind == "each" for b in self.blocks):
            self._fail(f"{head} outside {{{{#each}}}}")
        return f"loop.{loop_attr[head]}"

    def _fail(self, message: str) -> NoReturn:
        # One line, always: a tag quoted in the message may span lines.
        raise TemplateError(f"line {self.line}: {' '.join(message.split())}")
