# mypy: allow-untyped-decorators
"""botrix handlers for the benchmark: ``botrix-worker --app jobs_botrix``."""

from __future__ import annotations

import asyncio
from typing import Any

import probe

from botrix import handler


@handler("noop")
async def noop(ctx: Any, payload: Any) -> None:
    """Do nothing (drain and scale scenarios)."""
    probe.ran()


@handler("sleep")
async def sleep(ctx: Any, payload: Any) -> None:
    """Wait ``payload["s"]`` seconds (I/O-bound scenario)."""
    probe.started()
    await asyncio.sleep(payload["s"])
    probe.finished()


@handler("lat")
async def lat(ctx: Any, payload: Any) -> None:
    """Record enqueue-to-start from ``payload["t"]`` (latency scenario)."""
    probe.started(payload["t"])
    probe.finished()
