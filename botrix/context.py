"""What a handler receives besides its payload."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from botrix.model import JSON, ProgressSink


class JobContext:
    """The running job as its handler sees it.

    ``log`` is a structlog logger bound to the job's worker_id, queue, job_id, type, attempt
    and correlation_id. It is bound on first use: most handlers never log, and binding costs
    as much as the rest of starting a job.
    """

    __slots__ = (
        "_base",
        "_delivery",
        "_log",
        "_progress",
        "attempt",
        "correlation_id",
        "job_id",
        "max_retries",
        "queue",
        "type",
    )  # fmt: skip

    def __init__(
        self,
        job_id: str,
        type: str,
        queue: str,
        attempt: int,
        max_retries: int,
        correlation_id: str,
        log: Any,
        progress: ProgressSink,
        delivery: int,
    ) -> None:
        self.job_id = job_id
        self.type = type
        self.queue = queue
        self.attempt = attempt
        self.max_retries = max_retries
        self.correlation_id = correlation_id
        self._base = log
        self._log: Any = None
        self._progress = progress
        self._delivery = delivery

    @property
    def log(self) -> Any:
        """The job's logger (see the class docstring)."""
        if self._log is None:
            self._log = self._base.bind(
                queue=self.queue,
                job_id=self.job_id,
                type=self.type,
                attempt=self.attempt,
                correlation_id=self.correlation_id,
            )
        return self._log

    async def progress(self, value: JSON) -> None:
        """Publish a progress event (any JSON value) and keep it in the job's record."""
        await self._progress(self.queue, self.job_id, self._delivery, value)

    def __repr__(self) -> str:
        fields = f"job_id={self.job_id!r}, type={self.type!r}, queue={self.queue!r}, attempt={self.attempt}"
        return f"JobContext({fields})"


HandlerFunc = Callable[[JobContext, Any], Awaitable[Any]]
"""``async def handler(ctx, payload) -> result``."""
