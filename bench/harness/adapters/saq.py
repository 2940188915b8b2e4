"""SAQ: ``saq jobs_saq.settings`` (one process), enqueued with ``Queue.enqueue``."""

from __future__ import annotations

import asyncio
from typing import Any

from harness.adapters.base import Adapter, Kind, WorkerContext

WINDOW = 64


def command(ctx: WorkerContext) -> list[str]:
    """SAQ's CLI; concurrency comes from the settings dict (``BENCH_CONCURRENCY``)."""
    return [str(ctx.peers_bin / "saq"), "jobs_saq.settings", "--workers", "1"]


ADAPTER = Adapter(
    name="saq",
    venv="peers",
    package="saq",
    command=command,
    model="async",
    notes=("settings: concurrency=N (default 10)",),
)


class _Sender:
    def __init__(self) -> None:
        from jobs_saq import make_queue

        self._queue = make_queue()

    async def connect(self) -> None:
        await self._queue.connect()

    async def send(self, kind: Kind, kwargs: dict[str, Any]) -> None:
        await self._queue.enqueue(kind, **kwargs)

    async def send_many(self, kind: Kind, kwargs: dict[str, Any], n: int) -> None:
        for start in range(0, n, WINDOW):
            batch = min(WINDOW, n - start)
            await asyncio.gather(*(self.send(kind, kwargs) for _ in range(batch)))

    async def close(self) -> None:
        await self._queue.disconnect()


async def open_sender(url: str) -> _Sender:
    """A producer using SAQ's own ``Queue`` (the URL comes from ``BENCH_REDIS_URL``)."""
    sender = _Sender()
    await sender.connect()
    return sender
