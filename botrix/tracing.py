"""OpenTelemetry: a job's trace continues from the code that enqueued it (``--tracing otel``).

The envelope carries W3C trace context, ``traceparent`` and ``tracestate``, which a producer in
any language can set. The botrix client, when a span is current, wraps its enqueue in a
PRODUCER span ``send <queue>`` (a child of that span) and puts that span's context in the
envelope, so a trace shows the enqueue, its Redis time and its failure, and the attempts
beneath it. They are read and
written with the W3C propagator itself, not the process's global one: the envelope's format is
W3C whatever propagators an application configures for its HTTP calls (B3, X-Ray, baggage
alone), and with another one the context would silently not travel. A worker started with
``--tracing otel`` runs each attempt in a CONSUMER span that is a child of that context (named
and tagged as OpenTelemetry's messaging conventions say), current while the handler runs, so
the handler's own spans nest under it. Where spans go is the application's choice: it
configures the SDK and its exporter (in its handler module, or ``opentelemetry-instrument``).

Tracing never decides a job's fate: an SDK, sampler, processor or exporter that raises costs
the attempt its span (logged once as ``tracing.error``), never its result. For the same reason
the client's lookup of the current span never raises.

opentelemetry-api is optional (``pip install 'botrix[otel]'``) and botrix imports it only when
used: a worker without ``--tracing`` does not, and the client looks for a current span only in
a process that has loaded it already, since a process that never did cannot have one.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from botrix.logs import Logger
from botrix.model import TRACE_FIELDS, ErrorInfo, Job, Outcome

if TYPE_CHECKING:
    from opentelemetry.trace import Span


@contextlib.contextmanager
def sending(
    queue: str, *, job_type: str, job_id: str | None = None, count: int | None = None
) -> Iterator[dict[str, str] | None]:
    """An enqueue's PRODUCER span around the block, which gets its envelope fields (or None)."""
    span, fields = start_send(queue, job_type=job_type, job_id=job_id, count=count)
    try:
        yield fields
    except BaseException as exc:
        end_send(span, exc)
        raise
    end_send(span, None)


def start_send(
    queue: str, *, job_type: str, job_id: str | None = None, count: int | None = None
) -> tuple[Span | None, dict[str, str] | None]:
    """The PRODUCER span of an enqueue (of ``count`` jobs at once) and its context as envelope fields.

    (None, None) without a current span, or when OpenTelemetry is not loaded; never raises.
    """
    if "opentelemetry.trace" not in sys.modules:
        return None, None
    span = None
    try:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        if not trace.get_current_span().get_span_context().is_valid:
            return None, None
        span = trace.get_tracer("botrix").start_span(
            f"send {queue}",
            kind=trace.SpanKind.PRODUCER,
            attributes={
                "messaging.system": "botrix",
                "messaging.operation.type": "send",
                "messaging.operation.name": "send",
                "messaging.destination.name": queue,
                "botrix.job.type": job_type,
                **({"messaging.message.id": job_id} if job_id is not None else {}),
                **({"messaging.batch.message_count": count} if count is not None else {}),
            },
        )
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier, context=trace.set_span_in_context(span))
        return span, {name: value for name, value in carrier.items() if name in TRACE_FIELDS} or None
    except Exception:  # a broken SDK must not stop a job from being enqueued
        end_send(span, None)
        return None, None


def end_send(span: Span | None, error: BaseException | None) -> None:
    """Close an enqueue's span, failed with ``error`` if it did not go in; never raises."""
    if span is None:
        return
    with contextlib.suppress(Exception):
        if error is not None:
            from opentelemetry import trace

            span.record_exception(error)
            span.set_attribute("error.type", type(error).__qualname__)
            span.set_status(trace.Status(trace.StatusCode.ERROR, repr(error)[:500]))
        span.end()


class JobTracer:
    """Starts and ends the span of each attempt; built only with ``--tracing otel``."""

    def __init__(self, worker_id: str, log: Logger) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._worker_id = worker_id
        self._log = log
        self._failed = False
        self._context = context
        self._trace = trace
        self._propagator = TraceContextTextMapPropagator()
        self._tracer = trace.get_tracer("botrix")

    def start(self, job: Job) -> tuple[Span, object] | None:
        """Open the attempt's span and make it current; None if the SDK failed."""
        try:
            parent = self._propagator.extract(job.trace) if job.trace else None
            span = self._tracer.start_span(
                f"process {job.queue}",
                context=parent,
                kind=self._trace.SpanKind.CONSUMER,
                attributes={
                    "messaging.system": "botrix",
                    "messaging.operation.type": "process",
                    "messaging.operation.name": "process",
                    "messaging.destination.name": job.queue,
                    "messaging.message.id": job.id,
                    "messaging.message.conversation_id": job.correlation_id,
                    "messaging.client.id": self._worker_id,
                    "botrix.job.type": job.type,
                    "botrix.job.attempt": job.attempt,
                },
            )
            return span, self._context.attach(self._trace.set_span_in_context(span))
        except Exception as exc:
            self._failed_once(exc)
            return None

    def log_ids(self, started: tuple[Span, object]) -> tuple[tuple[str, str], ...]:
        """The attempt span's ``trace_id`` and ``span_id`` (hex), for the job's log lines.

        The trace id is the producer's, so a log line leads to the trace (Jaeger, Tempo), and
        back. Empty for a context that is not valid (no producer trace, no SDK); never raises.
        """
        try:
            context = started[0].get_span_context()
            if context.is_valid:
                return (
                    ("trace_id", format(context.trace_id, "032x")),
                    ("span_id", format(context.span_id, "016x")),
                )
        except Exception as exc:
            self._failed_once(exc)
        return ()

    def end(
        self,
        started: tuple[Span, object],
        outcome: Outcome | str,
        error: ErrorInfo | None,
        retry_asked: bool = False,
    ) -> None:
        """Record how the attempt ended (completed, retry, dead, cancelled) and close its span.

        A retry the handler asked for (RetryLater) is not an error, as in the log: its span is
        not marked failed, so a trace backend does not count an upstream's "slow down" as one.
        """
        span, token = started
        with contextlib.suppress(Exception):
            self._context.detach(token)  # type: ignore[arg-type]
        try:
            span.set_attribute("botrix.job.outcome", str(outcome))
            if retry_asked:
                span.set_attribute("botrix.job.retry_requested", True)
            elif error is not None:
                attributes: dict[str, Any] = {
                    "exception.type": error.type,
                    "exception.message": error.message,
                    "exception.stacktrace": error.traceback,
                }
                span.add_event("exception", attributes)
                span.set_attribute("error.type", error.type)
                span.set_status(
                    self._trace.Status(self._trace.StatusCode.ERROR, f"{error.type}: {error.message}"[:500])
                )
            span.end()
        except Exception as exc:
            self._failed_once(exc)

    def _failed_once(self, exc: Exception) -> None:
        if not self._failed:
            self._failed = True
            self._log.warning(
                "tracing.error", error=repr(exc)[:500], effect="attempts run without their spans"
            )
