"""The worker speaks sd_notify to a real datagram socket: READY, watchdog pings, STOPPING."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import tempfile
from collections.abc import Callable

from tests.conftest import WorkerProcess
from tests.redisproc import RedisServer


async def test_worker_notifies_ready_watchdog_and_stopping(
    redis_server: RedisServer, queue: str, spawn: Callable[..., WorkerProcess]
) -> None:
    directory = tempfile.mkdtemp(prefix="botrix-sd-", dir="/tmp")
    path = os.path.join(directory, "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.setblocking(False)
        env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}
        worker = spawn(redis_server.url, queue, env=env)
        seen: list[str] = []

        async def receive_until(field: str) -> None:
            async with asyncio.timeout(30):
                while not any(line.startswith(field) for line in seen):
                    try:
                        seen.extend(sock.recv(4096).decode().split("\n"))
                    except BlockingIOError:
                        await asyncio.sleep(0.02)

        await receive_until("READY=1")
        await receive_until("WATCHDOG=1")
        worker.signal(signal.SIGTERM)
        await receive_until("STOPPING=1")
        assert await worker.wait() == 0
    os.unlink(path)
    os.rmdir(directory)
    status = [line for line in seen if line.startswith("STATUS=")]
    assert status[0] == f"STATUS=serving {queue} with concurrency 5"
    assert seen.index("READY=1") < seen.index("STOPPING=1")
