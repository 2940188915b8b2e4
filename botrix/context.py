"""What a handler receives besides its payload."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from botrix.model import JSON, ProgressSink


@dataclass(slots=True)
class JobContext:
    """The running job as its handler sees it.

    ``log`` is a structlog logger already bound to the job's worker_id, queue, job_id, type,
    attempt and correlation_id.
    """

    job_id: str
    type: str
    queue: str
    attempt: int
    max_retries: int
    correlation_id: str
    log: Any
    _progress: ProgressSink
    _delivery: int

    async def progress(self, value: JSON) -> None:
        """Publish a progress event (any JSON value) and keep it in the job's record."""
        await self._progress(self.queue, self.job_id, self._delivery, value)


HandlerFunc = Callable[[JobContext, Any], Awaitable[Any]]
"""``async def handler(ctx, payload) -> result``."""
