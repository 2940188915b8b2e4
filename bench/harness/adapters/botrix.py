"""botrix: ``botrix-worker`` from the project's virtualenv, enqueued with ``botrix.Client``."""

from __future__ import annotations

import asyncio
from typing import Any

from harness.adapters.base import Adapter, Kind, WorkerContext

QUEUE = "default"
#: Enqueues in flight at once while pre-queueing (the client is async; one connection).
WINDOW = 64


def command(ctx: WorkerContext) -> list[str]:
    """``botrix-worker`` with its defaults, logging included; only concurrency and the port are given."""
    return [
        str(ctx.project_bin / "botrix-worker"),
        "--redis-url", ctx.redis_url,
        "--app", "jobs_botrix",
        "--concurrency", str(ctx.concurrency),
        "--queues", QUEUE,
        "--http-host", "127.0.0.1",
        "--http-port", "0",
    ]  # fmt: skip


ADAPTER = Adapter(
    name="botrix",
    venv="project",
    package="botrix",
    command=command,
    model="async",
    backlog_keys=(("list", "botrix:{default}:pending"), ("zset", "botrix:{default}:active")),
    notes=(
        "default log level (info: one JSON line a job, written to a pipe) while the peers log at "
        "WARNING: the issue asks for botrix with its defaults, and this errs against botrix",
        "--http-port 0 --http-host 127.0.0.1: probes and metrics stay on, on a free local port",
    ),
)


class _Sender:
    def __init__(self, url: str) -> None:
        from botrix import Client

        self._client = Client.from_url(url)

    async def send(self, kind: Kind, kwargs: dict[str, Any]) -> None:
        await self._client.enqueue(kind, kwargs, queue=QUEUE)

    async def send_many(self, kind: Kind, kwargs: dict[str, Any], n: int) -> None:
        for start in range(0, n, WINDOW):
            batch = min(WINDOW, n - start)
            await asyncio.gather(*(self.send(kind, kwargs) for _ in range(batch)))

    async def close(self) -> None:
        await self._client.aclose()


async def open_sender(url: str) -> _Sender:
    """A producer using botrix's own client (one Lua call per job: record + push + event)."""
    return _Sender(url)
