"""The sending platform's campaigns side (issue #5).

So far: stored templates with versions and their rendering; contacts,
lists, segments and double opt-in.

    templates.py   the API: create, version, activate, render, preview
    rendering.py   compile once (Jinja2 sandbox), render per recipient:
                   subject, HTML with CSS inlined, text part
    handlebars.py  SendGrid's common Handlebars subset -> Jinja2
    textpart.py    the text part made from the HTML, once per version
    contacts.py    contacts, custom field types, upsert by address
    lists.py       contact lists
    segments.py    saved filters: a JSON condition tree compiled to SQL
    csvio.py       streamed CSV import and export
    tokens.py      signed, expiring link tokens and the node secret
    optin.py       double opt-in: the confirmation mail and the click
    eligible.py    eligible_contacts(): who a campaign may mail

The rows are in ``postroom.store.templates`` and
``postroom.store.contacts``.
"""
