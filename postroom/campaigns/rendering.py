"""Compiling a template version once and rendering it per recipient.

Theory of operation. ``compile_version`` takes a version's three
sources (subject, HTML, optional text), translates the Handlebars
subset (``handlebars``), and compiles each part with Jinja2 in its
sandbox. The result, a ``CompiledVersion``, is immutable and holds no
per-recipient state, so one object serves a whole campaign, from any
thread. ``CompiledVersion.render(data, substitutions)`` then does, per
recipient:

1. render the subject (no escaping; CR/LF folded to spaces, since a
   value with a line break would otherwise inject header fields);
2. render the HTML with autoescape, apply the legacy substitutions,
   and inline the CSS of any ``<style>`` into ``style`` attributes
   (css-inline); the text part with no escaping, from the version's
   own text or from the text template ``textpart.derive`` made;
3. return a ``Rendered`` (subject, html, text).

The sandbox. Templates are written by platform users, so they run in
Jinja2's ``ImmutableSandboxedEnvironment``: attributes that reach
Python internals (``__class__``, ``mro``, ``__globals__``, function
internals) are refused, and so are methods that change the data
(``list.append``), which matters because one data dict may be shared by
every recipient of a campaign. Jinja2's default answer to an unsafe
attribute is an undefined value that fails only when used, which our
forgiving undefined would turn into an empty string; we raise at once
instead, so an escape attempt is an error, not a silent blank.

XXX: the sandbox bounds what a template can reach, not how long it
runs or how much it prints: nested ``{% for i in range(99999) %}``
loops run for minutes. That is acceptable while templates come only
from authenticated platform users (never from recipients' data, which
is only ever a value); the API and campaign fan-out will need a time
limit per render (docs/known-issues.md).

Missing data renders as an empty string, as SendGrid does: ``_Blank``
is Jinja2's chainable undefined (``a.b.c`` of nothing is nothing) that
also survives arithmetic, comparison and calls, and ``None`` prints as
nothing rather than "None". A real error in the data (``"a" + 1``)
still raises ``TemplateError``, naming the template, part and line.

Legacy substitutions (SendGrid's ``-name-`` keys) are plain text
replacement after rendering, in one pass, longest key first, so one
key's value is never substituted again. Like SendGrid's, the values are
not HTML-escaped: they are the sender's own text.

Cost, measured on this 2-core machine with ``python -m bench.templates``
(a 2.2 KB invitation with a ``<style>``, a loop over table rows and a
link, no text part): about 70 us per recipient in all, of which the
Jinja2 HTML render takes about 13 us, CSS inlining about 13 us and the
derived text template about 9 us; the rest is the subject, the
``<style>`` check and tidying the text. One core renders about 14,000
messages a second, so fan-out is bound by queueing, not templates. A
version whose HTML defeats ``textpart.derive`` pays about 0.3 ms more
per message for converting it. Compiling costs about 4 ms (mostly the
one-off HTML-to-text conversion), which is why ``templates.compiled``
caches compiled versions.
"""

from __future__ import annotations

import re
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import css_inline
import jinja2
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from postroom.campaigns import handlebars, textpart
from postroom.errors import TemplateError


@dataclass(frozen=True)
class Rendered:
    """One recipient's message parts."""

    subject: str
    html: str
    text: str


class _Blank(jinja2.ChainableUndefined):
    """Missing data: empty in output, and no operation on it fails."""

    __slots__ = ()

    # Jinja2 types these operators as never returning (they raise in
    # its Undefined); returning is the point here, hence the ignores.
    def _blank(self, *args: Any, **kwargs: Any) -> _Blank:
        return self

    __add__ = __radd__ = __sub__ = __rsub__ = _blank  # type: ignore[assignment]
    __mul__ = __rmul__ = __truediv__ = __rtruediv__ = _blank  # type: ignore[assignment]
    __floordiv__ = __rfloordiv__ = _blank  # type: ignore[assignment]
    __mod__ = __rmod__ = _blank  # type: ignore[assignment]
    __pos__ = __neg__ = __pow__ = __rpow__ = __call__ = _blank  # type: ignore[assignment]

    def _false(self, other: Any) -> bool:
        return False

    __lt__ = __le__ = __gt__ = __ge__ = _false  # type: ignore[assignment]

    def __int__(self) -> int:  # type: ignore[override]
        return 0

    def __float__(self) -> float:  # type: ignore[override]
        return 0.0


class _Sandbox(ImmutableSandboxedEnvironment):
    """The sandbox, raising at the first unsafe attribute access."""

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        raise SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r}"
            " object is unsafe"
        )


def _environment(autoescape: bool) -> _Sandbox:
    env = _Sandbox(
        autoescape=autoescape,
        undefined=_Blank,
        finalize=_finalize,
        # Keep the newline after a block tag, as the author wrote it.
        keep_trailing_newline=True,
    )
    # Fewer helpers, less surface: none of these is needed in mail.
    for name in ("lipsum", "cycler", "joiner"):
        env.globals.pop(name, None)
    env.filters["html_to_text"] = _html_to_text_filter
    return env


def _finalize(value: Any) -> Any:
    # Handlebars prints null as nothing; Jinja2 would print "None".
    return "" if value is None else value


def _html_to_text_filter(value: Any) -> str:
    text = str(value)
    # Most raw values are plain words: skip the parser for them.
    if "<" not in text and "&" not in text:
        return text
    return textpart.html_to_text(text).strip()


_HTML_ENV = _environment(autoescape=True)
_TEXT_ENV = _environment(autoescape=False)

_STYLE = re.compile(r"<style\b", re.I)
_INLINER = css_inline.CSSInliner(
    # Never fetch a <link> stylesheet: rendering must not reach the
    # network, and a template must not make us fetch a URL it chose.
    load_remote_stylesheets=False,
    keep_link_tags=True,
    # Media queries cannot be inlined; mobile layouts need them kept.
    keep_at_rules=True,
)
_LINE_BREAKS = re.compile(r"[\r\n]+")


class CompiledVersion:
    """A version's parts compiled once; ``render`` is safe to call from
    several threads at once."""

    def __init__(
        self,
        label: str,
        subject: jinja2.Template,
        html: jinja2.Template,
        text: jinja2.Template | None,
        text_derived: bool,
    ) -> None:
        self.label = label
        self._subject = subject
        self._html = html
        # None: no text template could be derived; convert each message.
        self._text = text
        self._text_derived = text_derived

    def render(
        self,
        data: Mapping[str, Any] | None = None,
        substitutions: Mapping[str, str] | None = None,
    ) -> Rendered:
        """Render for one recipient with *data* (dynamic template data)
        and *substitutions* (legacy ``-key-`` replacements).

        Raises TemplateError naming the part and line on a template
        error (unsafe access, a type error in the data ...).
        """
        data = data or {}
        replace = _replacer(substitutions)

        subject = self._run("subject", self._subject, data)
        subject = _LINE_BREAKS.sub(" ", replace(subject)).strip()

        html = replace(self._run("html", self._html, data))
        if _STYLE.search(html):
            try:
                html = _INLINER.inline(html)
            except ValueError as e:  # css_inline.InlineError
                raise TemplateError(f"{self.label}: css: {e}") from None

        if self._text is None:
            text = textpart.html_to_text(html)
        else:
            text = replace(self._run("text", self._text, data))
            if self._text_derived:
                text = textpart.tidy(text)
        return Rendered(subject, html, text)

    def _run(
        self, part: str, template: jinja2.Template, data: Mapping[str, Any]
    ) -> str:
        try:
            return template.render(data)
        except Exception as e:
            # The template is the user's code, so anything it raises is
            # the user's error, reported with the line it came from.
            raise TemplateError(
                _describe(self.label, part, _error_line(e, template), e)
            ) from None


def compile_version(
    label: str, subject: str, html: str, text: str | None
) -> CompiledVersion:
    """Compile one version. *label* names it in error messages, e.g.
    ``template d-12ab version 3f.. ("Spring")``.

    Raises TemplateError ("<label>, html part, line 4: ...") for
    Handlebars outside the subset or a Jinja2 syntax error.
    """
    subject_t = _compile(label, "subject", subject, _TEXT_ENV)
    html_t = _compile(label, "html", html, _HTML_ENV)
    if text is not None:
        return CompiledVersion(
            label, subject_t, html_t, _compile(label, "text", text, _TEXT_ENV), False
        )
    derived = textpart.derive(handlebars.translate(html))
    text_t = None
    if derived is not None:
        try:
            text_t = _TEXT_ENV.from_string(derived)
        except jinja2.TemplateSyntaxError:
            # A derivation we could not compile: fall back, never fail.
            text_t = None
    return CompiledVersion(label, subject_t, html_t, text_t, True)


def _compile(
    label: str, part: str, source: str, env: _Sandbox
) -> jinja2.Template:
    try:
        translated = handlebars.translate(source)
    except TemplateError as e:
        raise TemplateError(f"{label}, {part} part, {e}") from None
    filename = _filename(label, part)
    try:
        code = env.compile(translated, name=filename, filename=filename)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(
            f"{label}, {part} part, line {e.lineno}: {e.message}"
        ) from None
    return env.template_class.from_code(env, code, env.make_globals(None))


def _filename(label: str, part: str) -> str:
    return f"<{label} {part}>"


def _error_line(error: BaseException, template: jinja2.Template) -> int | None:
    """The template line *error* was raised from: Jinja2 rewrites the
    traceback so that template frames carry the template's file name
    and line numbers."""
    line = None
    tb: types.TracebackType | None = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == template.filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _describe(label: str, part: str, line: int | None, error: Exception) -> str:
    where = f"{label}, {part} part" + (f", line {line}" if line else "")
    if isinstance(error, SecurityError):
        return f"{where}: refused: {error}"
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    return f"{where}: {type(error).__name__}: {message}"


def _replacer(substitutions: Mapping[str, str] | None) -> Callable[[str], str]:
    if not substitutions:
        return _same
    keys = sorted(substitutions, key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(k) for k in keys if k))
    values = {k: str(v) for k, v in substitutions.items()}
    return lambda text: pattern.sub(lambda m: values[m.group()], text)


def _same(text: str) -> str:
    return text
