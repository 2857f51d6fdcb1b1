"""The sending platform's campaigns side (issue #5).

So far: stored templates with versions and their rendering.

    templates.py   the API: create, version, activate, render, preview
    rendering.py   compile once (Jinja2 sandbox), render per recipient:
                   subject, HTML with CSS inlined, text part
    handlebars.py  SendGrid's common Handlebars subset -> Jinja2
    textpart.py    the text part made from the HTML, once per version

The rows are in ``postroom.store.templates``.
"""
