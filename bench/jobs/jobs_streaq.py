# mypy: allow-untyped-decorators
"""streaq tasks for the benchmark: ``python streaq_main.py`` (the CLI minus its INFO logging)."""

from __future__ import annotations

import asyncio

import probe
from _settings import CONCURRENCY, QUEUE, REDIS_URL
from streaq import Worker

worker: Worker[None] = Worker(redis_url=REDIS_URL, concurrency=CONCURRENCY, queue_name=QUEUE)


@worker.task()
async def noop() -> None:
    """Do nothing (drain scenario)."""
    probe.ran()


@worker.task()
async def sleep(s: float) -> None:
    """Wait ``s`` seconds (I/O-bound scenario)."""
    probe.started()
    await asyncio.sleep(s)
    probe.finished()


@worker.task()
async def lat(t: float) -> None:
    """Record enqueue-to-start from ``t`` (latency scenario)."""
    probe.started(t)
    probe.finished()
