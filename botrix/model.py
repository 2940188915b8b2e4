"""The job envelope, its states and outcomes, and what a handler receives.

The envelope is the wire protocol (``docs/protocol.md``): a JSON object any producer can push
onto a queue. Only ``type`` is required; botrix fills in the rest.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeGuard

import orjson

from botrix.errors import EnvelopeError

#: Longest job id botrix accepts; ids are part of Redis keys.
MAX_ID_LENGTH = 200
#: Longest handler name.
MAX_TYPE_LENGTH = 200
#: Most retries a job may be given (--max-retries, a handler's or a job's max_retries).
MAX_RETRIES = 1000
#: What a job id may be made of: ids become Redis key names and log fields, so a safe ASCII set.
JOB_ID = re.compile(r"[A-Za-z0-9_.:@/+=#-]{1,200}")
JOB_ID_RULE = "1-200 of A-Z a-z 0-9 _ . : @ / + = # -"

JSON = Any
"""Any value that ``orjson`` can serialise."""


class JobStatus(StrEnum):
    """Where a job is in its life: queued -> running -> completed | retrying | dead.

    ``cancelled`` (botrix cancel) ends it from any state but the last three.
    """

    QUEUED = "queued"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    RETRYING = "retrying"
    COMPLETED = "completed"
    DEAD = "dead"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """True once nothing more will happen to the job by itself."""
        return self in (JobStatus.COMPLETED, JobStatus.DEAD, JobStatus.CANCELLED)


# Claimed and Job (and the executor's Attempt) are made for every job, so they are not frozen:
# a frozen dataclass sets each field through object.__setattr__, and a Job cost 2.2 us to
# make instead of 0.8. Nothing changes them after they are made.
@dataclass(slots=True)
class Claimed:
    """A job as the claim script hands it over: the raw envelope and its record's counters."""

    job_id: str
    envelope: bytes
    attempt: int
    delivery: int
    #: When the job could last run: its enqueue, the due time of its delay or retry, or its
    #: return to the queue (requeue, recovery, re-drive). The queue wait counts from here.
    ready_at_ms: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """A pending entry the claim dead-lettered instead of handing over (docs/protocol.md).

    An envelope over the size limit, or an entry whose record something else overwrote.
    """

    job_id: str
    error_type: str
    reason: str


@dataclass(slots=True)
class Job:
    """A validated job, ready to run."""

    id: str
    type: str
    payload: JSON
    queue: str
    attempt: int
    delivery: int
    ready_at_ms: int
    correlation_id: str
    max_retries: int | None = None
    timeout: float | None = None
    #: W3C trace context from the envelope (``traceparent``, ``tracestate``), if it has any.
    trace: dict[str, str] | None = None


#: The envelope fields of W3C trace context (botrix/tracing.py), and the most of each taken.
TRACE_FIELDS = ("traceparent", "tracestate")
MAX_TRACE_FIELD = 512


def _trace_context(envelope: dict[str, Any]) -> dict[str, str] | None:
    """The envelope's trace context. Never a reason to refuse a job: a bad field is ignored."""
    found: dict[str, str] | None = None
    for name in TRACE_FIELDS:
        value = envelope.get(name)
        if isinstance(value, str) and 0 < len(value) <= MAX_TRACE_FIELD:
            found = found or {}
            found[name] = value
    return found


def _optional_int(envelope: dict[str, Any], name: str) -> int | None:
    value = envelope.get(name)
    if value is None:
        return None
    if not is_retries(value):
        raise EnvelopeError(f"field '{name}' must be an integer from 0 to {MAX_RETRIES}, got {value!r:.80}")
    return value


def is_retries(value: object) -> TypeGuard[int]:
    """Whether ``value`` is a job's (or a handler's) max_retries: a whole number, 0 to MAX_RETRIES."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_RETRIES


def is_timeout(value: object) -> TypeGuard[float]:
    """Whether ``value`` is a job's (or a handler's) timeout: a positive, finite number of seconds."""
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < math.inf


def _optional_timeout(envelope: dict[str, Any]) -> float | None:
    value = envelope.get("timeout")
    if value is None:
        return None
    if not is_timeout(value):
        raise EnvelopeError(f"field 'timeout' must be a positive number of seconds, got {value!r:.80}")
    return float(value)


def _optional_str(envelope: dict[str, Any], name: str, limit: int) -> str | None:
    value = envelope.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise EnvelopeError(f"field '{name}' must be a non-empty string of at most {limit} characters")
    return value


def parse_job(claimed: Claimed, queue: str, *, trace: bool = False) -> Job:
    """Validate a claimed envelope; raise :class:`EnvelopeError` with a readable reason.

    Its trace context is read only with ``trace`` (a worker with ``--tracing otel``): every
    other job would pay for the lookups on its way to the handler.
    """
    try:
        envelope = orjson.loads(claimed.envelope)
    except orjson.JSONDecodeError as exc:
        raise EnvelopeError(f"envelope is not valid JSON: {exc}") from None
    if not isinstance(envelope, dict):
        raise EnvelopeError(f"envelope must be a JSON object, got {type(envelope).__name__}")
    job_type = envelope.get("type")
    if not isinstance(job_type, str) or not job_type or len(job_type) > MAX_TYPE_LENGTH:
        raise EnvelopeError(
            f"field 'type' is required: the handler's name, a string of 1 to {MAX_TYPE_LENGTH} characters"
        )
    given_id = envelope.get("id")
    if given_id is not None and given_id != claimed.job_id:
        raise EnvelopeError(f"field 'id' must be a string of {JOB_ID_RULE}")
    # The optional fields are rare: looked for first, so a job without them costs no calls.
    correlation_id = (
        _optional_str(envelope, "correlation_id", MAX_ID_LENGTH) if "correlation_id" in envelope else None
    )
    return Job(
        id=claimed.job_id,
        type=job_type,
        payload=envelope.get("payload"),
        queue=queue,
        attempt=claimed.attempt,
        delivery=claimed.delivery,
        ready_at_ms=claimed.ready_at_ms,
        correlation_id=correlation_id or claimed.job_id,
        max_retries=_optional_int(envelope, "max_retries") if "max_retries" in envelope else None,
        timeout=_optional_timeout(envelope) if "timeout" in envelope else None,
        trace=_trace_context(envelope) if trace else None,
    )


#: What a queue name may be made of (it is part of every key of the queue, and of events).
QUEUE_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,100}")


#: Longest delay a job may be given: ten years (a run time far beyond it is a bug, and one past
#: 64 bits would break every reader of the record).
MAX_DELAY_S = 10 * 365 * 86400


def validate_queue_name(queue: str) -> None:
    """Refuse queue names that could not be part of a key and an event (see :data:`QUEUE_NAME`)."""
    if not QUEUE_NAME.fullmatch(queue):
        raise ValueError(f"queue name must be 1-100 of A-Z a-z 0-9 _ . : -, got {queue!r:.60}")


def validate_job_id(job_id: str) -> None:
    """Refuse ids that the claim script would not take as given (see :data:`JOB_ID`)."""
    if not JOB_ID.fullmatch(job_id):
        raise ValueError(f"job id must be {JOB_ID_RULE}, got {job_id!r:.60}")


def build_envelope(
    job_id: str,
    job_type: str,
    payload: JSON,
    queue: str,
    *,
    max_retries: int | None,
    timeout: float | None,
    correlation_id: str | None,
    trace: dict[str, str] | None = None,
) -> bytes:
    """The envelope a botrix client stores for a job (fields left out take worker defaults)."""
    envelope: dict[str, Any] = {"id": job_id, "type": job_type, "payload": payload, "queue": queue}
    if max_retries is not None:
        envelope["max_retries"] = max_retries
    if timeout is not None:
        envelope["timeout"] = timeout
    if correlation_id is not None:
        envelope["correlation_id"] = correlation_id
    if trace:
        envelope.update(trace)
    return orjson.dumps(envelope)


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """What went wrong in an attempt, as stored in the job record and shown to operators."""

    type: str
    message: str
    traceback: str = ""

    def to_json(self) -> bytes:
        """Serialise for the job record."""
        return orjson.dumps({"type": self.type, "message": self.message, "traceback": self.traceback})


class Outcome(StrEnum):
    """How an attempt settles in Redis."""

    COMPLETED = "completed"
    RETRY = "retry"
    DEAD = "dead"
    REQUEUE = "requeue"


@dataclass(slots=True)
class Settlement:
    """One finished attempt waiting to be written back to Redis."""

    job_id: str
    queue: str
    delivery: int
    outcome: Outcome
    data: bytes = b""
    delay_ms: int = 0
    duration_s: float = 0.0
    job_type: str = ""
    attempt: int = 0
    correlation_id: str = ""
    error: ErrorInfo | None = None
    queue_wait_ms: int = 0
    #: The handler asked for its retry (RetryLater): an expected turn, not a failure to report.
    retry_asked: bool = False
    #: Why a REQUEUE puts the job back, for its log line.
    requeue_reason: str = "shutdown"
    #: The attempt's trace (``--tracing otel``), for its outcome line: a link to the trace.
    trace_id: str = ""
    #: Sent before in a call that failed: Redis may have written it then. Refused when sent
    #: again, it was either written then and the job has changed since, or its lease was lost;
    #: the refusal's log line says so.
    resent: bool = False
    #: The submitter's own record of the attempt (the runner's in-flight entry), opaque here: two
    #: attempts can share (queue, id, delivery) after Redis lost writes, so it is not a key.
    owner: object = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class JobInfo:
    """A job's record as a producer or operator sees it."""

    id: str
    queue: str
    status: JobStatus
    type: str | None
    payload: JSON
    attempts: int
    worker: str | None
    enqueued_at_ms: int | None
    started_at_ms: int | None
    finished_at_ms: int | None
    run_at_ms: int | None
    result: JSON
    error: dict[str, Any] | None
    progress: JSON
    envelope: str = field(repr=False, default="")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view for the CLI."""
        return {
            "id": self.id,
            "queue": self.queue,
            "status": str(self.status),
            "type": self.type,
            "payload": self.payload,
            "attempts": self.attempts,
            "worker": self.worker,
            "enqueued_at_ms": self.enqueued_at_ms,
            "started_at_ms": self.started_at_ms,
            "finished_at_ms": self.finished_at_ms,
            "run_at_ms": self.run_at_ms,
            "result": self.result,
            "error": self.error,
            "progress": self.progress,
        }


ProgressSink = Callable[[str, str, int, JSON], Awaitable[None]]
"""Publishes a progress value: ``(queue, job_id, delivery, value)``."""


#: Bounds of a rate limit: a claim a week at the slowest, 1e9 claims a window at the most.
RATE_MAX_LIMIT = 1_000_000_000
RATE_PER_RANGE_S = (0.001, 7 * 86400.0)


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A queue's rate limit: at most ``max`` jobs start in any ``per`` seconds, fleet-wide."""

    max: int
    per: float
    #: Jobs started in the window that ends now.
    used: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.max, bool) or not isinstance(self.max, int) or not 1 <= self.max <= RATE_MAX_LIMIT:
            raise ValueError(
                f"rate limit max must be a whole number from 1 to {RATE_MAX_LIMIT:,}, not {self.max!r}"
            )
        low, high = RATE_PER_RANGE_S
        number = isinstance(self.per, int | float) and not isinstance(self.per, bool)
        if not (number and math.isfinite(self.per) and low <= self.per <= high):
            raise ValueError(f"rate limit per must be from {low:g} to {high:g} seconds, not {self.per!r}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view for the CLI and the admin API (which takes it back in a PUT)."""
        return {"max": self.max, "per_s": self.per, "used": self.used}
