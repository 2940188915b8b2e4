"""Dramatiq with its Redis broker: ``dramatiq jobs_dramatiq -p 1 -t N``, enqueued with ``send``."""

from __future__ import annotations

from typing import Any

from harness.adapters.base import Adapter, Kind, WorkerContext


def command(ctx: WorkerContext) -> list[str]:
    """Dramatiq's CLI: one worker process (default: one per CPU) with N threads (default 8)."""
    return [
        str(ctx.peers_bin / "dramatiq"),
        "jobs_dramatiq",
        "--processes", "1",
        "--threads", str(ctx.concurrency),
    ]  # fmt: skip


ADAPTER = Adapter(
    name="dramatiq",
    venv="peers",
    package="dramatiq",
    command=command,
    model="threads",
    natural_concurrency=8,
    notes=(
        "--processes 1 (default: one per CPU) --threads N (default 8)",
        "its CLI keeps a supervisor process beside the worker process: both are measured",
    ),
)


class _Sender:
    def __init__(self) -> None:
        import jobs_dramatiq

        self._jobs = jobs_dramatiq

    async def send(self, kind: Kind, kwargs: dict[str, Any]) -> None:
        getattr(self._jobs, kind).send(**kwargs)

    async def send_many(self, kind: Kind, kwargs: dict[str, Any], n: int) -> None:
        actor = getattr(self._jobs, kind)
        for _ in range(n):
            actor.send(**kwargs)

    async def close(self) -> None:
        self._jobs.broker.close()


async def open_sender(url: str) -> _Sender:
    """A producer using ``actor.send`` (the URL comes from ``BENCH_REDIS_URL``)."""
    return _Sender()
