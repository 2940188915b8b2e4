"""OpenTelemetry: a job's trace continues from the code that enqueued it (``--tracing otel``).

The envelope carries W3C trace context, ``traceparent`` and ``tracestate``, which a producer in
any language can set; the botrix client sets them when a span is current. A worker started
with ``--tracing otel`` runs each attempt in a CONSUMER span that is a child of that context
(named and tagged as OpenTelemetry's messaging conventions say), and spans the handler makes
nest under it. Where spans go is the application's choice: it configures the SDK and its
exporter (in its handler module, or with ``opentelemetry-instrument``).

opentelemetry-api is optional (``pip install 'botrix[otel]'``) and imported only when used: a
worker without ``--tracing`` never loads it (it would cost every worker memory and start-up
time), and the client looks for a current span only in a process that has loaded it already,
since a process that never did cannot have one.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from botrix.model import TRACE_FIELDS, ErrorInfo, Job, Outcome

if TYPE_CHECKING:
    from opentelemetry.trace import Span


def check_available() -> None:
    """Raise ValueError when opentelemetry-api cannot be imported (``--tracing otel``)."""
    try:
        import opentelemetry.propagate
        import opentelemetry.trace  # noqa: F401
    except ImportError:
        raise ValueError("needs opentelemetry-api: pip install 'botrix[otel]'") from None


def current_context() -> dict[str, str] | None:
    """The current span's context as envelope fields, or None without one."""
    if "opentelemetry.trace" not in sys.modules:
        return None
    from opentelemetry import propagate, trace

    if not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return {name: value for name, value in carrier.items() if name in TRACE_FIELDS} or None


class JobTracer:
    """Starts the span of each attempt; built only with ``--tracing otel``."""

    def __init__(self) -> None:
        from opentelemetry import propagate, trace

        self._extract = propagate.extract
        self._tracer = trace.get_tracer("botrix")
        self._kind = trace.SpanKind.CONSUMER
        self._status = trace.Status
        self._error = trace.StatusCode.ERROR

    @contextmanager
    def attempt(self, job: Job) -> Iterator[Span]:
        """The attempt's span, current while the handler runs (its own spans nest under it)."""
        parent = self._extract(job.trace) if job.trace else None
        attributes: dict[str, str | int] = {
            "messaging.system": "botrix",
            "messaging.operation.type": "process",
            "messaging.destination.name": job.queue,
            "messaging.message.id": job.id,
            "messaging.message.conversation_id": job.correlation_id,
            "botrix.job.type": job.type,
            "botrix.job.attempt": job.attempt,
        }
        with self._tracer.start_as_current_span(
            f"process {job.queue}",
            context=parent,
            kind=self._kind,
            attributes=attributes,
            record_exception=False,  # an attempt's errors are recorded as its outcome, below
            set_status_on_exception=False,
        ) as span:
            yield span

    def outcome(self, span: Span, outcome: Outcome, error: ErrorInfo | None) -> None:
        """Record how the attempt ended: completed, retry or dead, and the error if any."""
        span.set_attribute("botrix.job.outcome", str(outcome))
        if error is not None:
            span.add_event(
                "exception",
                {
                    "exception.type": error.type,
                    "exception.message": error.message,
                    "exception.stacktrace": error.traceback,
                },
            )
            span.set_status(self._status(self._error, f"{error.type}: {error.message}"[:500]))
