"""arq: ``arq jobs_arq.WorkerSettings``, enqueued with ``ArqRedis.enqueue_job``."""

from __future__ import annotations

import asyncio
from typing import Any

from harness.adapters.base import Adapter, Kind, WorkerContext

WINDOW = 64


def command(ctx: WorkerContext) -> list[str]:
    """Arq's CLI with a WARNING log config; ``max_jobs`` comes from the settings class."""
    return [
        str(ctx.peers_bin / "arq"),
        "jobs_arq.WorkerSettings",
        "--custom-log-dict", "jobs_arq.LOG_CONFIG",
    ]  # fmt: skip


ADAPTER = Adapter(
    name="arq",
    venv="peers",
    package="arq",
    command=command,
    model="async",
    notes=(
        "WorkerSettings.max_jobs=N (default 10)",
        "--custom-log-dict at WARNING (arq's default INFO logs two lines per job)",
    ),
)


class _Sender:
    def __init__(self, redis: Any) -> None:
        self._redis = redis

    async def send(self, kind: Kind, kwargs: dict[str, Any]) -> None:
        await self._redis.enqueue_job(kind, **kwargs)

    async def send_many(self, kind: Kind, kwargs: dict[str, Any], n: int) -> None:
        for start in range(0, n, WINDOW):
            batch = min(WINDOW, n - start)
            await asyncio.gather(*(self.send(kind, kwargs) for _ in range(batch)))

    async def close(self) -> None:
        await self._redis.aclose()


async def open_sender(url: str) -> _Sender:
    """A producer using arq's ``create_pool``."""
    from arq import create_pool
    from arq.connections import RedisSettings

    return _Sender(await create_pool(RedisSettings.from_dsn(url)))
