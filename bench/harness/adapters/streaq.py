"""streaq: the worker of ``jobs_streaq`` run as its CLI does, enqueued with ``task.enqueue``."""

from __future__ import annotations

from typing import Any

from harness.adapters.base import Adapter, Kind, WorkerContext

CHUNK = 500


def command(ctx: WorkerContext) -> list[str]:
    """``streaq run jobs_streaq:worker`` minus its hard-coded INFO logging (streaq_main.py)."""
    return [str(ctx.peers_bin / "python"), str(ctx.bench / "jobs" / "streaq_main.py")]


ADAPTER = Adapter(
    name="streaq",
    venv="peers",
    package="streaq",
    command=command,
    model="async",
    notes=(
        "Worker(concurrency=N) (default 16); prefetch left at its default (= concurrency)",
        "run through a 10-line launcher equal to `streaq run` but logging at WARNING",
    ),
)


class _Sender:
    def __init__(self) -> None:
        import jobs_streaq

        self._jobs = jobs_streaq
        self._worker = jobs_streaq.worker

    async def open(self) -> None:
        await self._worker.__aenter__()

    async def send(self, kind: Kind, kwargs: dict[str, Any]) -> None:
        await getattr(self._jobs, kind).enqueue(**kwargs)

    async def send_many(self, kind: Kind, kwargs: dict[str, Any], n: int) -> None:
        task = getattr(self._jobs, kind)
        for start in range(0, n, CHUNK):
            batch = [task.enqueue(**kwargs) for _ in range(min(CHUNK, n - start))]
            await self._worker.enqueue_many(batch)

    async def close(self) -> None:
        await self._worker.__aexit__(None, None, None)


async def open_sender(url: str) -> _Sender:
    """A producer using streaq's own ``enqueue`` (``enqueue_many`` to pre-queue)."""
    sender = _Sender()
    await sender.open()
    return sender
