"""What happens to finished attempts: buffered until the runner writes them, then reported.

Jobs that finish while an exchange call is in flight wait here and go together in the next
call, so under load one round trip settles a whole batch. Once Redis has the batch, each
attempt is logged, counted and measured here, in one place.
"""

from __future__ import annotations

from collections import defaultdict

from botrix.errors import EnvelopeError
from botrix.health import WorkerState
from botrix.logs import Logger, fast_info
from botrix.metrics import Metrics
from botrix.model import Claimed, Outcome, Rejected, Settlement, parse_job

#: What one call writes back at most, in results and errors (at least one attempt, whatever its
#: size). A call that fails is sent again whole, so it must fit in the socket timeout on a slow
#: link; results are at most --max-result-bytes each (executor.py).
CALL_BYTES = 4 * 1024 * 1024

_REFUSED = "lease lost: the job was recovered or claimed by another worker"
# The earlier call got no answer, so which one happened cannot be known here.
_RESENT_REFUSED = (
    "refused when sent again after an earlier call carrying it failed: that call may have written "
    "it and the job has changed since (run again, expired or removed), or the lease was lost"
)


class Settler:
    """The buffer of finished attempts and the report of written ones."""

    def __init__(self, state: WorkerState, log: Logger, metrics: Metrics, lanes: int) -> None:
        self._state = state
        self._log = log
        self._info = fast_info(log)  # a line a job: the logger's hottest call
        self._metrics = metrics
        self._buffers: list[list[Settlement]] = [[] for _ in range(lanes)]

    def submit(self, settlement: Settlement, lane: int) -> None:
        """Queue a finished attempt for the next write of its lane (runner.py)."""
        self._buffers[lane].append(settlement)

    def __len__(self) -> int:
        return sum(map(len, self._buffers))

    def pending(self, lane: int) -> int:
        """Finished attempts of ``lane`` waiting to be written."""
        return len(self._buffers[lane])

    def take(self, lane: int) -> dict[str, list[Settlement]]:
        """The oldest of ``lane``'s buffer, up to CALL_BYTES of data, by queue; the rest stays.

        What stays counts as pending, so the runner's next pass takes it.
        """
        buffer = self._buffers[lane]
        by_queue: dict[str, list[Settlement]] = defaultdict(list)
        size = 0
        for taken, settlement in enumerate(buffer):
            size += len(settlement.data)
            if size > CALL_BYTES and taken:
                self._buffers[lane] = buffer[taken:]
                break
            by_queue[settlement.queue].append(settlement)
        else:
            self._buffers[lane] = []
        return by_queue

    def put_back(self, lane: int, batches: dict[str, list[Settlement]]) -> None:
        """Return unwritten settlements (Redis failed) to the front of ``lane``'s buffer."""
        self._buffers[lane] = [s for batch in batches.values() for s in batch] + self._buffers[lane]

    def written(self, batch: list[Settlement], refused: set[tuple[str, int]]) -> None:
        """Log, count and measure a batch that Redis has accepted (or refused, for lost leases).

        At INFO a successful attempt is one line; the job's fields are passed with each call
        rather than bound first, which would build a logger per job.
        """
        counters = self._state.counters
        log = self._log
        for s in batch:
            job = {
                "queue": s.queue,
                "job_id": s.job_id,
                "type": s.job_type,
                "attempt": s.attempt,
                "correlation_id": s.correlation_id,
            }
            if s.trace_id:
                job["trace_id"] = s.trace_id
            if refused and (s.job_id, s.delivery) in refused:
                counters.refused_acks += 1
                self._metrics.ack_refused(s.queue)
                log.warning(
                    "job.ack_refused",
                    **job,
                    outcome=s.outcome.value,
                    reason=_RESENT_REFUSED if s.resent else _REFUSED,
                )
                continue
            ran = s.duration_s > 0
            self._metrics.job_finished(s.queue, s.job_type, s.outcome.value, s.duration_s if ran else None)
            if s.outcome is Outcome.REQUEUE:
                job["reason"] = s.requeue_reason
                self._info("job.requeued", job)
                continue
            counters.processed += 1
            duration_ms = round(s.duration_s * 1000, 3)
            if s.outcome is Outcome.COMPLETED:
                counters.succeeded += 1
                job["queue_wait_ms"] = s.queue_wait_ms
                job["duration_ms"] = duration_ms
                self._info("job.succeeded", job)
                continue
            counters.failed += 1
            error = s.error.type if s.error else None
            message = s.error.message if s.error else None
            self._metrics.job_failed(s.queue, s.job_type, error or "unknown", s.outcome.value)
            if s.retry_asked:
                # RetryLater: the handler chose to come back later (a rate limit): one INFO
                # line, no stack. It still counts as an attempt, and as a retry.
                counters.retried += 1
                self._info("job.retry_requested", {**job, "delay_ms": s.delay_ms, "message": message})
                continue
            log.warning(
                "job.failed",
                **job,
                queue_wait_ms=s.queue_wait_ms,
                duration_ms=duration_ms,
                error=error,
                message=message,
                # The handler's stack, as the job record keeps it (its last 4,000 characters):
                # the log should not send the operator to Redis for it.
                traceback=s.error.traceback if s.error else None,
            )
            if s.outcome is Outcome.RETRY:
                counters.retried += 1
                self._info("job.retry_scheduled", {**job, "delay_ms": s.delay_ms})
            else:
                counters.dead += 1
                log.error("job.dead", **job, error=error, reason=message)

    def cancelled(self, queue: str, claimed: Claimed) -> None:
        """Count an attempt an operator's cancel stopped (its line, job.cancelled, is the runner's).

        Nothing is written for it: the cancel already wrote the record. Its type is read from
        the envelope again, as nothing else of the attempt is left.
        """
        try:
            job_type = parse_job(claimed, queue).type
        except EnvelopeError:
            job_type = "unknown"
        self._metrics.job_finished(queue, job_type, "cancelled", None)

    def rejected(self, queue: str, entries: list[Rejected]) -> None:
        """Report entries the claim dead-lettered before any handler saw them.

        An envelope over the size limit or a record something else overwrote: dead letters
        like any other, counted and logged, with no job type to name.
        """
        for entry in entries:
            self._state.counters.dead += 1
            self._metrics.dead_at_claim(queue, entry.error_type)
            self._log.error(
                "job.dead",
                queue=queue,
                job_id=entry.job_id,
                attempt=0,
                error=entry.error_type,
                reason=entry.reason,
            )

    def abandon(self) -> None:
        """Give up on what is unwritten (Redis gone at shutdown): leases expire, jobs are recovered."""
        for settlement in (s for buffer in self._buffers for s in buffer):
            self._log.warning(
                "job.settle_abandoned",
                job_id=settlement.job_id,
                queue=settlement.queue,
                reason="redis unavailable at shutdown; another worker recovers the job after its lease",
            )
        self._buffers = [[] for _ in self._buffers]
