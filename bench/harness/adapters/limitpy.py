"""The bare loop over redis-py (``limit.py --client redis-py``): the ceiling with the usual client."""

from __future__ import annotations

from harness.adapters import limit
from harness.adapters.base import Adapter, WorkerContext


def command(ctx: WorkerContext) -> list[str]:
    """The bare loop with redis.asyncio (hiredis parser) instead of its own connection."""
    return [*limit.command(ctx), "--client", "redis-py"]


ADAPTER = Adapter(
    name="limitpy",
    venv="project",
    package=None,
    command=command,
    model="async",
    backlog_keys=limit.ADAPTER.backlog_keys,
    notes=("the bare loop, talking to Redis through redis.asyncio instead of its own connection",),
)

open_sender = limit.open_sender
