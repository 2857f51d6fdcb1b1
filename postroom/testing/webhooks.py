"""A webhook receiver for tests: a loopback HTTP server on a thread
that records every POST (headers and raw body) and answers with the
status codes a test scripts, 200 once the script is used up.

    with WebhookReceiver(fail_first=[500, 503]) as receiver:
        url = receiver.url
        ...
        receiver.wait_for(lambda posts: len(posts) >= 3)
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Post:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what we answered

    def events(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = json.loads(self.body)
        return found


class WebhookReceiver:
    def __init__(self, fail_first: Iterable[int] = ()) -> None:
        self.script = list(fail_first)
        self.posts: list[Post] = []
        self._lock = threading.RLock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server names it
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with receiver._lock:
                    status = receiver.script.pop(0) if receiver.script else 200
                    receiver.posts.append(
                        Post(self.path, dict(self.headers.items()), body, status)
                    )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/hook"

    def accepted(self) -> list[dict[str, Any]]:
        """Every event of every post we answered 2xx, in order."""
        with self._lock:
            posts = list(self.posts)
        return [e for p in posts if 200 <= p.status < 300 for e in p.events()]

    def wait_for(
        self, check: Callable[[list[Post]], bool], timeout: float = 20.0
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if check(list(self.posts)):
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"webhook posts: {len(self.posts)}")
            time.sleep(0.05)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
