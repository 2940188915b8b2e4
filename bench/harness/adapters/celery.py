"""Celery on Redis, threads pool: ``celery -A jobs_celery worker -P threads -c N``."""

from __future__ import annotations

import os
from typing import Any

from harness.adapters.base import Adapter, Kind, WorkerContext


def command(ctx: WorkerContext) -> list[str]:
    """Celery's worker with the threads pool (default: prefork) and concurrency N."""
    return [
        str(ctx.peers_bin / "celery"),
        "-A", "jobs_celery",
        "worker",
        "--pool", "threads",
        "--concurrency", str(ctx.concurrency),
        "--loglevel", "WARNING",
    ]  # fmt: skip


ADAPTER = Adapter(
    name="celery",
    venv="peers",
    package="celery",
    command=command,
    model="threads",
    natural_concurrency=os.cpu_count() or 1,
    notes=(
        "--pool threads (default prefork) --concurrency N (default: number of CPUs)",
        "no result backend (Celery's default)",
    ),
)


class _Sender:
    def __init__(self) -> None:
        import jobs_celery

        self._jobs = jobs_celery

    async def send(self, kind: Kind, kwargs: dict[str, Any]) -> None:
        getattr(self._jobs, kind).apply_async(kwargs=kwargs)

    async def send_many(self, kind: Kind, kwargs: dict[str, Any], n: int) -> None:
        task = getattr(self._jobs, kind)
        with self._jobs.app.producer_or_acquire() as producer:
            for _ in range(n):
                task.apply_async(kwargs=kwargs, producer=producer)

    async def close(self) -> None:
        self._jobs.app.close()


async def open_sender(url: str) -> _Sender:
    """A producer using ``task.apply_async`` (the URL comes from ``BENCH_REDIS_URL``)."""
    return _Sender()
