"""The bare loop (``bench/limit.py``): the ceiling, fed by plain ``RPUSH`` of JSON envelopes."""

from __future__ import annotations

import json
from typing import Any

from harness.adapters.base import Adapter, Kind, WorkerContext

PENDING = "limit:{default}:pending"
#: Envelopes per RPUSH while pre-queueing.
CHUNK = 1000


def command(ctx: WorkerContext) -> list[str]:
    """The bare loop on the project's Python (uvloop, hiredis, orjson)."""
    return [
        str(ctx.project_bin / "python"),
        str(ctx.bench / "limit.py"),
        "--redis-url", ctx.redis_url,
        "--concurrency", str(ctx.concurrency),
    ]  # fmt: skip


ADAPTER = Adapter(
    name="limit",
    venv="project",
    package=None,
    command=command,
    model="async",
    backlog_keys=(("list", PENDING), ("zset", "limit:{default}:active")),
    notes=("the ceiling: claim and settle are one Lua call per batch; no logs, no metrics",),
)


def _envelope(kind: Kind, kwargs: dict[str, Any]) -> str:
    return json.dumps({"type": kind, "payload": kwargs}, separators=(",", ":"))


class _Sender:
    def __init__(self, url: str) -> None:
        from redis.asyncio import Redis

        self._redis = Redis.from_url(url)

    async def send(self, kind: Kind, kwargs: dict[str, Any]) -> None:
        await self._redis.rpush(PENDING, _envelope(kind, kwargs))

    async def send_many(self, kind: Kind, kwargs: dict[str, Any], n: int) -> None:
        envelope = _envelope(kind, kwargs)
        for start in range(0, n, CHUNK):
            await self._redis.rpush(PENDING, *([envelope] * min(CHUNK, n - start)))

    async def close(self) -> None:
        await self._redis.aclose()


async def open_sender(url: str) -> _Sender:
    """A producer that pushes envelopes with one ``RPUSH`` per job (the wire protocol)."""
    return _Sender(url)
