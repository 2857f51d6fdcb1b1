"""Fakes and helpers that tests of any package may use.

- ``smtp``: drive the sans-I/O SMTP server core with an accept-everything
  policy (``CoreDriver``), a spool and an authenticator that record what
  they get, a byte-exact asyncio SMTP client, and the ``C:``/``S:``
  transcript format replayed against both the core and a real listener.
- ``peers``: real mail peers (Postfix, smtp-source, smtp-sink) on
  loopback, for interoperability tests and benchmarks.
- ``providers``: scripted fake mail providers (greylisting, throttling,
  rejections, slow or vanishing servers, TLS demands) on 127.0.0.x.
- ``dns``: a DNS server on 127.0.0.1 serving the tests' ``.test`` zones.
- ``clock``: a wall clock that moves only when a test says so.
- ``process``: a real ``postroom serve`` in a subprocess.

Nothing here is imported by the server itself.
"""
