"""Postroom: an ESMTP server, durable queue, delivery engine, mailbox
server and sending platform in one package."""

__version__ = "0.1.0"
