"""Demo handlers used by ``make run``.

One that succeeds, one that fails then succeeds, a slow one with progress, and one that
rejects its payload (to fill the dead letters).
"""

from __future__ import annotations

import asyncio
from typing import Any

from botrix import InvalidPayloadError, JobContext, handler


@handler("example.hello")
async def hello(ctx: JobContext, payload: Any) -> dict[str, str]:
    """Greet someone."""
    name = payload.get("name", "world") if isinstance(payload, dict) else "world"
    return {"greeting": f"hello, {name}"}


@handler("example.flaky", max_retries=3)
async def flaky(ctx: JobContext, payload: Any) -> dict[str, int]:
    """Fail the first ``fail_times`` attempts, then succeed: shows retries with backoff."""
    fail_times = payload.get("fail_times", 2) if isinstance(payload, dict) else 2
    if ctx.attempt <= fail_times:
        raise ConnectionError(f"upstream unavailable (attempt {ctx.attempt})")
    return {"succeeded_on_attempt": ctx.attempt}


@handler("example.slow", timeout=120)
async def slow(ctx: JobContext, payload: Any) -> dict[str, float]:
    """Work for a while, reporting progress each step."""
    seconds = float(payload.get("seconds", 3)) if isinstance(payload, dict) else 3.0
    steps = 5
    for step in range(1, steps + 1):
        await asyncio.sleep(seconds / steps)
        await ctx.progress({"step": step, "of": steps})
    return {"slept": seconds}


@handler("example.reject")
async def reject(ctx: JobContext, payload: Any) -> None:
    """Refuse the payload: a non-retryable error sends the job straight to the dead letters."""
    raise InvalidPayloadError(f"cannot process payload {payload!r:.60}")
