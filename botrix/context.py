"""What a handler receives besides its payload."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botrix.model import JSON, ProgressSink

if TYPE_CHECKING:
    from datetime import datetime


#: ``Client.enqueue`` of the worker's own client: what :meth:`JobContext.enqueue` calls.
Enqueue = Callable[..., Awaitable[str]]


@dataclass(slots=True)
class JobContext:
    """The running job as its handler sees it.

    ``log`` is a structlog logger bound to the job's worker_id, queue, job_id, type, attempt
    and correlation_id. It is bound on first use: most handlers never log, and binding costs
    as much as the rest of starting a job.
    """

    job_id: str
    type: str
    queue: str
    attempt: int
    max_retries: int
    correlation_id: str
    #: What the worker's lifespans opened for every job to share (a database pool, an HTTP
    #: client), by the names they gave (``@lifespan``); empty without one.
    resources: dict[str, Any] = field(repr=False)
    _base_log: Any = field(repr=False)
    _progress: ProgressSink = field(repr=False)
    _delivery: int = field(repr=False)
    _enqueue: Enqueue = field(repr=False)
    #: The attempt span's trace_id and span_id with ``--tracing otel``, bound into ``log``.
    _trace: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    _log: Any = field(default=None, init=False, repr=False, compare=False)

    @property
    def log(self) -> Any:
        """The job's logger (see the class docstring)."""
        if self._log is None:
            self._log = self._base_log.bind(
                queue=self.queue,
                job_id=self.job_id,
                type=self.type,
                attempt=self.attempt,
                correlation_id=self.correlation_id,
                **dict(self._trace),
            )
        return self._log

    @property
    def trace_id(self) -> str:
        """The attempt's OpenTelemetry trace id (hex) with ``--tracing otel``, else empty."""
        return dict(self._trace).get("trace_id", "")

    async def progress(self, value: JSON) -> None:
        """Publish a progress event (any JSON value) and keep it in the job's record.

        Best effort: while Redis cannot take it (after the client's timeouts), the update is
        dropped with a ``job.progress_dropped`` warning and the handler goes on.
        """
        await self._progress(self.queue, self.job_id, self._delivery, value)

    async def enqueue(
        self,
        type: str,
        payload: JSON = None,
        *,
        queue: str | None = None,
        delay: float = 0.0,
        run_at: datetime | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        job_id: str | None = None,
        correlation_id: str | None = None,
        once: bool = False,
    ) -> str:
        """Queue a follow-up job over the worker's own connection, as ``Client.enqueue``; its id.

        It goes to this job's queue unless ``queue`` names another, and carries this job's
        correlation id unless given one. A retried attempt enqueues again: with ``job_id``
        (say ``f"{ctx.job_id}:next"``) and ``once=True`` the follow-up is queued once per job.
        """
        return await self._enqueue(
            type,
            payload,
            queue=self.queue if queue is None else queue,
            delay=delay,
            run_at=run_at,
            max_retries=max_retries,
            timeout=timeout,
            job_id=job_id,
            correlation_id=self.correlation_id if correlation_id is None else correlation_id,
            once=once,
        )


HandlerFunc = Callable[[JobContext, Any], Awaitable[Any]]
"""``async def handler(ctx, payload) -> result``."""

LifespanFunc = Callable[[dict[str, Any]], AsyncIterator[None]]
"""``async def lifespan(resources): <open>; yield; <close>``: an async generator (``@lifespan``)."""
