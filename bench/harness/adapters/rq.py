"""RQ: ``rq worker -w rq.worker.SimpleWorker`` (no fork per job), enqueued with ``Queue``."""

from __future__ import annotations

from typing import Any

from harness.adapters.base import Adapter, Kind, WorkerContext

CHUNK = 500


def command(ctx: WorkerContext) -> list[str]:
    """RQ's worker with the SimpleWorker class; it runs one job at a time whatever N is."""
    return [
        str(ctx.peers_bin / "rq"),
        "worker",
        "--url", ctx.redis_url,
        "--worker-class", "rq.worker.SimpleWorker",
        "--logging_level", "WARNING",
        "default",
    ]  # fmt: skip


ADAPTER = Adapter(
    name="rq",
    venv="peers",
    package="rq",
    command=command,
    model="single",
    natural_concurrency=1,
    notes=(
        "--worker-class rq.worker.SimpleWorker (default Worker forks per job)",
        "--logging_level WARNING (default INFO logs each job); concurrency is always 1",
    ),
)


class _Sender:
    def __init__(self, url: str) -> None:
        from redis import Redis
        from rq import Queue

        self._redis = Redis.from_url(url)
        self._queue = Queue("default", connection=self._redis)

    async def send(self, kind: Kind, kwargs: dict[str, Any]) -> None:
        self._queue.enqueue(f"jobs_rq.{kind}", **kwargs)

    async def send_many(self, kind: Kind, kwargs: dict[str, Any], n: int) -> None:
        from rq import Queue

        for start in range(0, n, CHUNK):
            data = [
                Queue.prepare_data(f"jobs_rq.{kind}", kwargs=kwargs) for _ in range(min(CHUNK, n - start))
            ]
            with self._redis.pipeline() as pipe:
                self._queue.enqueue_many(data, pipeline=pipe)
                pipe.execute()

    async def close(self) -> None:
        self._redis.close()


async def open_sender(url: str) -> _Sender:
    """A producer using RQ's ``Queue.enqueue`` (``enqueue_many`` to pre-queue)."""
    return _Sender(url)
