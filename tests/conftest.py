"""Fixtures shared by the whole suite.

``postroom_server`` is a real ``postroom serve`` subprocess on free
loopback ports (``postroom.testing.process``); ``postroom_factory``
starts more of them, with settings of the test's choosing, and
``module_postroom_factory`` starts nodes that a module's tests share.
All stop what they started when their scope ends and fail if the
server logged a traceback: an exception that reached the log is a bug
even when the client saw a polite 451.

``merging_proxy`` puts a ``MergingProxy`` in front of a port, to make
the STARTTLS timing that once lost commands happen every time.

``require_tool`` and ``missing_peer`` decide what happens when a real
peer program (swaks, Postfix's smtp-source) is not installed: on a
developer's machine the test is skipped, but with the environment
variable ``CI`` set it fails, so that a broken CI image can never turn
the interoperability tests into a row of silent skips.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from postroom.testing.process import LOOPBACK, PostroomProcess

# Postfix installs its tools in /usr/sbin, which is not on every PATH.
_EXTRA_PATH = ("/usr/sbin", "/sbin", "/usr/local/sbin")


def missing_peer(reason: str) -> NoReturn:
    """Skip the test, or fail it when running under CI."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must have every peer "
                    "(scripts/install-peers.sh)", pytrace=False)
    pytest.skip(reason)


def require_tool(name: str) -> str:
    """The full path of program ``name``; see ``missing_peer`` otherwise."""
    search = os.pathsep.join([os.environ.get("PATH", ""), *_EXTRA_PATH])
    path = shutil.which(name, path=search)
    if path is None:
        missing_peer(f"{name} is not installed")
    return path


@pytest.fixture(name="require_tool", scope="session")
def require_tool_fixture() -> Callable[[str], str]:
    return require_tool


@pytest.fixture(name="missing_peer", scope="session")
def missing_peer_fixture() -> Callable[[str], NoReturn]:
    return missing_peer


def check_server_log(server: PostroomProcess) -> None:
    """Fail if the server's log holds a traceback."""
    log = server.log_text()
    start = log.find("Traceback (most recent call last)")
    if start >= 0:
        excerpt = "".join(f"\n  | {line}"
                          for line in log[start:].splitlines()[:40])
        pytest.fail(f"the server logged a traceback:{excerpt}", pytrace=False)


@pytest.fixture
def postroom_factory(tmp_path: Path) -> Iterator[Callable[..., PostroomProcess]]:
    """``make(settings=None, start=True, **options) -> PostroomProcess``.

    Each call gets a directory of its own under ``tmp_path``; options are
    those of ``PostroomProcess``. Every server is stopped at teardown.
    """
    made: list[PostroomProcess] = []

    def make(settings: dict[str, Any] | None = None, *, start: bool = True,
             **options: Any) -> PostroomProcess:
        server = PostroomProcess(tmp_path / f"node{len(made) + 1}",
                                 settings=settings, **options)
        made.append(server)
        if start:
            server.start()
        return server

    yield make
    for server in made:
        server.close()
    for server in made:
        check_server_log(server)


@pytest.fixture(scope="module")
def module_postroom_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., PostroomProcess]]:
    """Like ``postroom_factory``, for servers shared by a module's tests.

    Starting a node costs a second or two (the interpreter, the imports,
    a certificate); tests that only add messages and look them up by
    queue id can share one.
    """
    made: list[PostroomProcess] = []

    def make(settings: dict[str, Any] | None = None, *, start: bool = True,
             **options: Any) -> PostroomProcess:
        server = PostroomProcess(tmp_path_factory.mktemp("node"),
                                 settings=settings, **options)
        made.append(server)
        if start:
            server.start()
        return server

    yield make
    for server in made:
        server.close()
    for server in made:
        check_server_log(server)


@pytest.fixture
def postroom_server(
    postroom_factory: Callable[..., PostroomProcess],
) -> PostroomProcess:
    """A running node with the default test configuration."""
    return postroom_factory()


class MergingProxy:
    """A loopback TCP proxy that holds back what the client sends after
    STARTTLS and forwards each burst in one write.

    A regression harness for the STARTTLS race, with real clients: the
    client's last handshake message and its first command (EHLO) reach
    the server in the same segment, as they often do on a busy machine,
    and the server used to drop that command. Before STARTTLS, and after
    the first ``BURSTS`` bursts, bytes pass straight through.
    """

    WINDOW = 0.2  # seconds a burst stays open after its first byte
    BURSTS = 3  # ClientHello; Finished + EHLO; one more for safety

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server((LOOPBACK, 0))
        self.listener.settimeout(0.2)
        self.port: int = self.listener.getsockname()[1]
        self.closing = threading.Event()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def close(self) -> None:
        self.closing.set()
        for thread in list(self.threads):
            thread.join(5.0)
        self.listener.close()

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            server = socket.create_connection((LOOPBACK, self.target_port))
            for sock in (client, server):
                sock.settimeout(0.2)
            for pump in (self._upstream, self._downstream):
                thread = threading.Thread(target=pump, args=(client, server),
                                          daemon=True)
                self.threads.append(thread)
                thread.start()

    def _recv(self, sock: socket.socket) -> bytes | None:
        """Bytes, b"" at end of stream, or None when nothing came."""
        try:
            return sock.recv(65536)
        except TimeoutError:
            return None
        except OSError:
            return b""

    def _downstream(self, client: socket.socket, server: socket.socket) -> None:
        while not self.closing.is_set():
            data = self._recv(server)
            if data is None:
                continue
            if not data:
                break
            with contextlib.suppress(OSError):
                client.sendall(data)
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_WR)

    def _upstream(self, client: socket.socket, server: socket.socket) -> None:
        seen = b""
        bursts = 0
        while not self.closing.is_set():
            data = self._recv(client)
            if data is None:
                continue
            if not data:
                break
            if b"STARTTLS\r\n" in seen and bursts < self.BURSTS:
                bursts += 1
                deadline = time.monotonic() + self.WINDOW
                while time.monotonic() < deadline:
                    more = self._recv(client)
                    if more == b"":
                        break
                    data += more or b""
            else:
                seen = (seen + data)[-64:]
            with contextlib.suppress(OSError):
                server.sendall(data)
        for sock in (client, server):
            with contextlib.suppress(OSError):
                sock.close()


@pytest.fixture
def merging_proxy() -> Iterator[Callable[[int], int]]:
    """``proxy(port) -> port``: a ``MergingProxy`` in front of ``port``."""
    proxies: list[MergingProxy] = []

    def start(port: int) -> int:
        proxies.append(MergingProxy(port))
        return proxies[-1].port

    yield start
    for proxy in proxies:
        proxy.close()
