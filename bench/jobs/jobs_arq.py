"""arq functions and settings for the benchmark: ``arq jobs_arq.WorkerSettings``."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import probe
from _settings import CONCURRENCY, REDIS_URL
from arq.connections import RedisSettings


async def noop(ctx: Any) -> None:
    """Do nothing (drain scenario)."""
    probe.ran()


async def sleep(ctx: Any, s: float) -> None:
    """Wait ``s`` seconds (I/O-bound scenario)."""
    probe.started()
    await asyncio.sleep(s)
    probe.finished()


async def lat(ctx: Any, t: float) -> None:
    """Record enqueue-to-start from ``t`` (latency scenario)."""
    probe.started(t)
    probe.finished()


class WorkerSettings:
    """arq's worker settings class; everything but ``max_jobs`` is arq's default."""

    functions: ClassVar[list[Any]] = [noop, sleep, lat]
    redis_settings = RedisSettings.from_dsn(REDIS_URL)
    max_jobs = CONCURRENCY


#: arq's own default log config at WARNING instead of INFO (``--custom-log-dict``): the same
#: level every system runs at, so no system pays for a log line per job.
LOG_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"arq.standard": {"level": "WARNING", "class": "logging.StreamHandler"}},
    "loggers": {"arq": {"handlers": ["arq.standard"], "level": "WARNING"}},
}
