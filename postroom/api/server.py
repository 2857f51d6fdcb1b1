"""uvicorn inside a worker: the HTTP API on a socket the supervisor bound.

uvicorn's ``Server.serve`` is made to own a process: it installs its
own SIGINT/SIGTERM handlers, which would take the signals away from
the worker's graceful stop. So we drive its parts instead: ``startup``
with our socket (no lifespan, no logging set-up of its own),
``main_loop`` as a task (it refreshes the Date header each second and
watches ``should_exit``), and at ``stop`` its ``shutdown``, which stops
accepting, lets requests in flight finish (a Mail Send waiting for its
fsync among them) for up to ``grace`` seconds, then closes.

Stop the HTTP service before the spool: a request in flight must find
the spool open to be answered 202.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import uvicorn

from postroom import logs
from postroom.api.app import create_app
from postroom.api.context import ApiContext

log = logging.getLogger(__name__)


class HttpService:
    """The API on one listening socket, in the running event loop."""

    def __init__(self, context: ApiContext, *, grace: float = 30.0) -> None:
        self.context = context
        config = uvicorn.Config(
            create_app(context),
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=int(grace),
            # The app reads bodies itself (bounded); uvicorn's own
            # limits stay at their defaults.
        )
        self._server = uvicorn.Server(config)
        self._loop_task: asyncio.Task[None] | None = None

    async def start(self, sockets: dict[str, socket.socket]) -> None:
        """Serve on the socket named ``http:<port>`` in *sockets*."""
        name = self.context.listener
        sock = sockets[name]
        # What Server._serve does before startup: load the app and make
        # the (disabled) lifespan handler.
        server = self._server
        if not server.config.loaded:
            server.config.load()
        server.lifespan = server.config.lifespan_class(server.config)
        await server.startup(sockets=[sock])
        self._loop_task = asyncio.get_running_loop().create_task(
            self._server.main_loop(), name="http"
        )
        host, port = sock.getsockname()[:2]
        log.info(logs.event("listening", listener=name, address=f"{host}:{port}"))

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._loop_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        # Our socket is the supervisor's too: leave it to its owner.
        await self._server.shutdown(sockets=None)
