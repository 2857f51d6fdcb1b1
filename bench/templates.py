"""Template rendering cost per recipient (issue 5, templates).

Not a throughput run of a campaign (that comes with the fan-out): this
measures what one recipient's render costs on one core, step by step,
so that the fan-out's budget (over 2,000 recipients/s on 2 cores,
queueing included) can be checked against it. The message is a
typical invitation: about 2.2 KB of HTML with a ``<style>``, a loop
over table rows, a link, and no text part (so the derived text
template is used).

Run: ``python -m bench.templates [--renders N]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from postroom.campaigns import textpart
from postroom.campaigns.rendering import _INLINER, compile_version

HTML = (
    "<html><head><style>p { color: #333; font-family: Arial }"
    " .btn { background: #06c; color: #fff; padding: 8px }"
    " h1 { font-size: 22px } td { padding: 4px }</style></head><body>"
    "<h1>Hello {{ first_name }}!</h1>"
    "<p>You are invited to our launch party on {{ date }}.</p>"
    "<table>{% for i in items %}<tr><td>{{ i.name }}</td>"
    "<td>{{ i.price }}</td></tr>{% endfor %}</table><p>"
    + "Sed do eiusmod tempor incididunt ut labore. " * 40
    + '</p><a class="btn" href="{{ url }}">RSVP now</a>'
    "<p>Cheers, the team</p></body></html>"
)
DATA = {
    "first_name": "Ann",
    "date": "Friday",
    "url": "https://rsvp.example/r?a=1&b=2",
    "items": [{"name": "tea", "price": 1}, {"name": "cake", "price": 2}],
}


def per_call(fn: Callable[[], object], n: int) -> float:
    """Microseconds per call of *fn*, best of three runs of *n*."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, time.perf_counter() - start)
    return best / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--renders", type=int, default=3000)
    n = parser.parse_args().renders

    start = time.perf_counter()
    version = compile_version("bench", "Hi {{ first_name }}", HTML, None)
    compile_ms = (time.perf_counter() - start) * 1e3
    html = version._html.render(DATA)

    rows = [
        ("whole render (subject, html, css, text)",
         per_call(lambda: version.render(DATA), n)),
        ("  jinja2 html", per_call(lambda: version._html.render(DATA), n)),
        ("  css-inline", per_call(lambda: _INLINER.inline(html), n)),
        ("  derived text template",
         per_call(lambda: version._text and version._text.render(DATA), n)),
        ("html-to-text per message (the fallback)",
         per_call(lambda: textpart.html_to_text(html), max(n // 10, 10))),
    ]
    print(f"compile once: {compile_ms:.1f} ms; html {len(html)} bytes")
    for label, us in rows:
        print(f"{label:<42} {us:8.1f} us")
    whole = rows[0][1]
    print(f"one core: {1e6 / whole:,.0f} renders/s")


if __name__ == "__main__":
    main()
