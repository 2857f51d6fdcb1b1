"""Sharing connections between workers (server/listening.py): the
LoadBoard, and a burst of clients spread over two worker processes of a
real ``postroom serve`` instead of landing on whichever woke first."""

from __future__ import annotations

import asyncio
import collections
import re
import socket
import time
from collections.abc import Callable

from postroom.server import listening
from postroom.testing.process import LOOPBACK, PostroomProcess


def test_the_board_is_shared_with_a_forked_child() -> None:
    import os

    board = listening.LoadBoard(2)
    pid = os.fork()
    if pid == 0:  # the child: take slot 1 and count three sessions in
        listening.join_board(board, 1)
        for _ in range(3):
            listening._count(1)
        os._exit(0)
    os.waitpid(pid, 0)
    assert list(board.slots) == [0, 3]
    listening.join_board(board, 0)
    try:
        assert not listening._busier_than_others()
        listening._count(4)
        assert listening._busier_than_others()
    finally:
        listening.join_board(None, 0)


def test_a_busy_worker_leaves_the_connection_then_takes_it_anyway() -> None:
    # Alone on the board, a worker busier than an idle (or dead) peer
    # waits at most MAX_DEFER milliseconds, then accepts all the same.
    async def scenario() -> float:
        board = listening.LoadBoard(2)
        listening.join_board(board, 0)
        listening._count(5)
        server = socket.create_server((LOOPBACK, 0))
        server.setblocking(False)
        accepted = asyncio.Event()

        class Service(listening.ListeningService[object]):  # type: ignore[type-var]
            pass

        service = Service.__new__(Service)
        service._handshakes = set()

        async def fake_open(conn: socket.socket, *_: object) -> None:
            conn.close()
            accepted.set()

        service._open = fake_open  # type: ignore[method-assign]
        task = asyncio.get_running_loop().create_task(
            service._accept(server, lambda: asyncio.Protocol(), None)
        )
        started = time.monotonic()
        client = socket.create_connection(server.getsockname())
        await asyncio.wait_for(accepted.wait(), 2)
        waited = time.monotonic() - started
        task.cancel()
        client.close()
        server.close()
        return waited

    try:
        waited = asyncio.run(scenario())
    finally:
        listening.join_board(None, 0)
    assert waited >= listening.MAX_DEFER * 0.001 * 0.8


def test_a_burst_of_clients_is_spread_over_two_workers(
    postroom_factory: Callable[..., PostroomProcess],
) -> None:
    node = postroom_factory({"smtp": {"workers": 2}})
    # Both workers answer before the burst (the first greeting only
    # proves one of them is up).
    assert node.wait_for_log("listening", timeout=10)
    deadline = time.monotonic() + 10
    while node.log_text(since_start=True).count("listening listener=relay") < 2:
        assert time.monotonic() < deadline, node.log_tail()
        time.sleep(0.05)

    def connects() -> list[str]:
        return [ln for ln in node.log_text(since_start=True).splitlines()
                if " connect client=" in ln]

    before = len(connects())  # the readiness probes' connections
    clients = [socket.create_connection((LOOPBACK, node.relay_port), 5)
               for _ in range(8)]
    try:
        for client in clients:
            assert client.recv(100).startswith(b"220")
        lines = connects()[before:]
        assert len(lines) == 8
        per_worker = collections.Counter(
            re.search(r"\[(\d+)\]", ln).group(1) for ln in lines  # type: ignore[union-attr]
        )
        assert len(per_worker) == 2, per_worker
        assert max(per_worker.values()) - min(per_worker.values()) <= 2, per_worker
    finally:
        for client in clients:
            client.close()
