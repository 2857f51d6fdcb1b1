"""The HTTP API: SendGrid's v3 API, served by uvicorn in each worker.

Theory of operation
-------------------

Where it runs. ``postroom serve`` binds ``http.address`` with the SMTP
sockets, and every worker process serves it beside SMTP, POP3 and IMAP
(``server.HttpService``: uvicorn on the worker's event loop, on the
shared socket; the kernel hands each connection to one worker). A
request is served by the worker that accepted it and queued into that
worker's own spool, exactly as an SMTP session queues into it, so the
API adds no process, lock or hop to the path of a message.

A request's way (``v3/mail_send.py``):

    Bearer key (auth.py) -> JSON shape (mailsend/model.py)
      -> rules and limits (mailsend/checks.py)
      -> one MIME message per personalization (mailsend/compose.py)
      -> envelope, Received, spool, fsync (inject.py) -> 202

Errors take SendGrid's shape everywhere (``errors.py``), so its client
libraries report them as they would SendGrid's own.

Modules: ``app`` (routes, body limit, OpenAPI), ``context`` (what
endpoints need of the node), ``keys`` (API keys and scopes), ``auth``,
``errors``, ``inject``, ``server`` (uvicorn inside a worker), and one
module per endpoint under ``v3/``.
"""
