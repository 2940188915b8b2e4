"""SAQ functions and settings for the benchmark: ``saq jobs_saq.settings``."""

from __future__ import annotations

import asyncio
from typing import Any

import probe
from _settings import CONCURRENCY, QUEUE, REDIS_URL
from saq import Queue


async def noop(ctx: Any) -> None:
    """Do nothing (drain scenario)."""
    probe.ran()


async def sleep(ctx: Any, *, s: float) -> None:
    """Wait ``s`` seconds (I/O-bound scenario)."""
    probe.started()
    await asyncio.sleep(s)
    probe.finished()


async def lat(ctx: Any, *, t: float) -> None:
    """Record enqueue-to-start from ``t`` (latency scenario)."""
    probe.started(t)
    probe.finished()


def make_queue() -> Queue:
    """The queue the worker and the producer share."""
    return Queue.from_url(REDIS_URL, name=QUEUE)


settings = {
    "queue": make_queue(),
    "functions": [noop, sleep, lat],
    "concurrency": CONCURRENCY,
}
