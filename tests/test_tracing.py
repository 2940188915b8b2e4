"""--tracing otel: each attempt is a span that continues the trace of the code that enqueued it."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator

import orjson
import pytest
import redis.asyncio as aredis
from opentelemetry import propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from botrix import keys
from botrix.client import Client
from botrix.model import JobStatus
from tests.conftest import WorkerProcess, eventually, running_worker
from tests.redisproc import RedisServer

_EXPORTER = InMemorySpanExporter()


class _Exploding(SpanProcessor):
    """A span processor with a bug, for the jobs of one queue only (the provider is global)."""

    def __init__(self) -> None:
        self.queue: str | None = None

    def on_end(self, span: ReadableSpan) -> None:
        if self.queue is not None and (span.attributes or {}).get("messaging.destination.name") == self.queue:
            raise RuntimeError("exporter bug")


_EXPLODING = _Exploding()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The process's tracer provider (set once: OpenTelemetry allows no second) and its spans."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        provider.add_span_processor(_EXPLODING)
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def _spans_of(spans: InMemorySpanExporter, job_id: str, kind: SpanKind) -> list[ReadableSpan]:
    return [
        s
        for s in spans.get_finished_spans()
        if (s.attributes or {}).get("messaging.message.id") == job_id and s.kind is kind
    ]


def _attempts(spans: InMemorySpanExporter, job_id: str) -> list[ReadableSpan]:
    found = _spans_of(spans, job_id, SpanKind.CONSUMER)
    return sorted(found, key=lambda s: int(str((s.attributes or {}).get("botrix.job.attempt", 0))))


async def test_an_attempt_continues_the_trace_that_enqueued_it(
    redis_server: RedisServer, client: Client, queue: str, spans: InMemorySpanExporter
) -> None:
    """A job enqueued inside a span is sent in a PRODUCER span, child of it, and runs in a
    CONSUMER span of the same trace, child of that, each named and tagged as the messaging
    conventions say; a failed attempt carries its error, and so does a refused enqueue."""
    with trace.get_tracer("test").start_as_current_span("request") as request:
        echo = await client.enqueue("t.echo", {"n": 1}, queue=queue)
        failing = await client.enqueue("t.fail", {}, queue=queue, max_retries=1)
        slowed = await client.enqueue("t.rate_limited", {"retry_after": 0.01}, queue=queue)
        with pytest.raises(ValueError, match="job id must be"):
            await client.enqueue("t.echo", {}, queue=queue, job_id="bad id")
        with pytest.raises(ValueError, match="max_retries"):
            await client.enqueue("t.echo", {}, queue=queue, job_id=f"refused-{queue}", max_retries=-1)
    async with running_worker(redis_server.url, queue, tracing="otel") as worker:
        worker_id = worker.settings.worker_id
        assert (await client.wait(echo, timeout=30)).status is JobStatus.COMPLETED
        assert (await client.wait(failing, timeout=30)).status is JobStatus.DEAD
        assert (await client.wait(slowed, timeout=30)).status is JobStatus.COMPLETED

    [span] = _attempts(spans, echo)
    [sent] = _spans_of(spans, echo, SpanKind.PRODUCER)
    context = request.get_span_context()
    assert sent.name == f"send {queue}" and sent.parent is not None and sent.parent.span_id == context.span_id
    assert dict(sent.attributes or {}) == {
        "messaging.system": "botrix",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": queue,
        "messaging.message.id": echo,
        "botrix.job.type": "t.echo",
    }
    assert sent.status.status_code is StatusCode.UNSET and sent.context is not None
    assert span.name == f"process {queue}" and span.kind is SpanKind.CONSUMER
    assert span.context is not None and span.context.trace_id == context.trace_id
    assert span.parent is not None and span.parent.span_id == sent.context.span_id
    [refused] = _spans_of(spans, f"refused-{queue}", SpanKind.PRODUCER)
    assert (
        refused.status.status_code is StatusCode.ERROR
        and (refused.attributes or {})["error.type"] == "ValueError"
    )
    assert dict(span.attributes or {}) == {
        "messaging.system": "botrix",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.client.id": worker_id,
        "messaging.destination.name": queue,
        "messaging.message.id": echo,
        "messaging.message.conversation_id": echo,
        "botrix.job.type": "t.echo",
        "botrix.job.attempt": 1,
        "botrix.job.outcome": "completed",
    }
    assert span.status.status_code is StatusCode.UNSET

    first, second = _attempts(spans, failing)
    assert [(s.attributes or {})["botrix.job.outcome"] for s in (first, second)] == ["retry", "dead"]
    for attempt in (first, second):
        assert attempt.status.status_code is StatusCode.ERROR
        [event] = attempt.events
        assert event.name == "exception" and (event.attributes or {})["exception.type"] == "RuntimeError"
        assert (attempt.attributes or {})["error.type"] == "RuntimeError"
        assert "Traceback" in str((event.attributes or {})["exception.stacktrace"])

    asked, ran = _attempts(spans, slowed)  # RetryLater: a turn the handler asked for, no error
    assert (asked.attributes or {})["botrix.job.outcome"] == "retry"
    assert (asked.attributes or {})["botrix.job.retry_requested"] is True
    assert asked.status.status_code is StatusCode.UNSET and asked.events == ()
    assert (ran.attributes or {})["botrix.job.outcome"] == "completed"


async def test_a_foreign_producer_passes_its_trace_in_the_envelope(
    redis_server: RedisServer, client: Client, queue: str, spans: InMemorySpanExporter
) -> None:
    """Any producer can set W3C `traceparent` in the envelope; a malformed one is ignored (the
    job runs, in a trace of its own), never a reason to dead-letter the job."""
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    envelopes = [
        {"id": "traced", "type": "t.echo", "payload": 1, "traceparent": f"00-{trace_id}-{parent_id}-01"},
        {"id": "garbled", "type": "t.echo", "payload": 2, "traceparent": "not a trace"},
        {"id": "wrong-type", "type": "t.echo", "payload": 3, "traceparent": 12, "tracestate": ["x"]},
    ]
    redis_server.client().rpush(keys.queue_keys(queue).pending, *[orjson.dumps(e) for e in envelopes])
    async with running_worker(redis_server.url, queue, tracing="otel"):
        for envelope in envelopes:
            info = await client.wait(str(envelope["id"]), timeout=30, queue=queue)
            assert info.status is JobStatus.COMPLETED
    [traced] = _attempts(spans, "traced")
    assert traced.context is not None and f"{traced.context.trace_id:032x}" == trace_id
    assert traced.parent is not None and f"{traced.parent.span_id:016x}" == parent_id
    for job_id in ("garbled", "wrong-type"):
        [span] = _attempts(spans, job_id)
        assert span.parent is None


async def test_no_spans_without_the_flag_nor_context_without_a_span(
    redis_server: RedisServer, client: Client, queue: str, spans: InMemorySpanExporter
) -> None:
    job_id = await client.enqueue("t.echo", 1, queue=queue)  # no span is current here
    envelope = orjson.loads(
        redis_server.client().hget(keys.queue_keys(queue).job(job_id), "envelope") or b"{}"
    )
    assert "traceparent" not in envelope
    async with running_worker(redis_server.url, queue):
        assert (await client.wait(job_id, timeout=30)).status is JobStatus.COMPLETED
    assert spans.get_finished_spans() == ()


async def test_a_broken_tracing_pipeline_never_costs_a_job_its_result(
    redis_server: RedisServer, client: Client, queue: str, spans: InMemorySpanExporter
) -> None:
    """A processor that raises when the span ends: the job still completes with its result, and
    the worker says once that tracing failed."""
    _EXPLODING.queue = queue
    try:
        ids = [await client.enqueue("t.echo", i, queue=queue) for i in range(3)]
        async with running_worker(redis_server.url, queue, tracing="otel"):
            for i, job_id in enumerate(ids):
                info = await client.wait(job_id, timeout=30)
                assert (info.status, info.result) == (JobStatus.COMPLETED, {"echo": i, "attempt": 1})
    finally:
        _EXPLODING.queue = None


async def test_the_envelope_carries_w3c_context_whatever_the_global_propagator(
    redis_server: RedisServer, client: Client, queue: str, spans: InMemorySpanExporter
) -> None:
    """An application whose global propagator is not W3C (baggage only here, B3 elsewhere)
    still gets its trace into the envelope and continued by the worker."""
    before = propagate.get_global_textmap()
    propagate.set_global_textmap(W3CBaggagePropagator())
    try:
        with trace.get_tracer("test").start_as_current_span("request") as request:
            job_id = await client.enqueue("t.echo", 1, queue=queue)
    finally:
        propagate.set_global_textmap(before)
    async with running_worker(redis_server.url, queue, tracing="otel"):
        assert (await client.wait(job_id, timeout=30)).status is JobStatus.COMPLETED
    [span] = _attempts(spans, job_id)
    [sent] = _spans_of(spans, job_id, SpanKind.PRODUCER)
    assert sent.parent is not None and sent.parent.span_id == request.get_span_context().span_id
    assert (
        span.parent is not None and sent.context is not None and span.parent.span_id == sent.context.span_id
    )


async def test_an_attempt_cut_short_by_the_shutdown_says_so(
    redis_server: RedisServer, client: Client, queue: str, spans: InMemorySpanExporter
) -> None:
    job_id = await client.enqueue("t.sleep", {"seconds": 30}, queue=queue)
    async with running_worker(redis_server.url, queue, tracing="otel", shutdown_timeout=0.2):
        await eventually(lambda: _running(client, job_id), what="the job running")
    assert (await client.job(job_id)).status is JobStatus.QUEUED  # requeued for the next worker
    [span] = _attempts(spans, job_id)
    assert (span.attributes or {})["botrix.job.outcome"] == "cancelled"
    assert span.status.status_code is StatusCode.UNSET


async def _running(client: Client, job_id: str) -> bool:
    return (await client.job(job_id)).status is JobStatus.RUNNING


async def test_the_jobs_log_lines_carry_its_trace_id(
    redis_server: RedisServer, client: Client, queue: str, spawn: Callable[..., WorkerProcess]
) -> None:
    """With --tracing otel, the handler's own lines and the job's outcome line name the trace
    (the producer's, from the envelope) and the attempt's span: from a log line to the trace.
    A worker with no SDK configured still continues the producer's trace id."""
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    envelope = {"type": "t.logs", "traceparent": f"00-{trace_id}-{parent}-01"}
    async with aredis.Redis.from_url(redis_server.url) as r:
        await r.rpush(keys.queue_keys(queue).pending, orjson.dumps({**envelope, "id": f"traced-{queue}"}))
        await r.rpush(
            keys.queue_keys(queue).pending, orjson.dumps({"type": "t.logs", "id": f"plain-{queue}"})
        )
    worker = spawn(redis_server.url, queue, "--tracing", "otel")
    assert (await client.wait(f"traced-{queue}", timeout=30, queue=queue)).result == trace_id
    assert (await client.wait(f"plain-{queue}", timeout=30, queue=queue)).result == ""
    await worker.wait_for("job.succeeded", count=2)
    lines = {
        (e["event"], e["job_id"]): e
        for e in worker.events()
        if e.get("event") in ("handled", "job.succeeded")
    }
    assert lines[("handled", f"traced-{queue}")]["trace_id"] == trace_id
    assert len(lines[("handled", f"traced-{queue}")]["span_id"]) == 16
    assert lines[("job.succeeded", f"traced-{queue}")]["trace_id"] == trace_id
    assert "trace_id" not in lines[("handled", f"plain-{queue}")]
    assert "trace_id" not in lines[("job.succeeded", f"plain-{queue}")]
    worker.signal(signal.SIGTERM)
    assert await worker.wait() == 0


async def test_a_follow_up_job_continues_the_trace_of_the_attempt_that_queued_it(
    redis_server: RedisServer, client: Client, queue: str, spans: InMemorySpanExporter
) -> None:
    """``ctx.enqueue`` inside an attempt: its PRODUCER span is a child of the attempt's CONSUMER
    span, and the follow-up's attempt runs in the same trace."""
    with trace.get_tracer("test").start_as_current_span("request"):
        parent = await client.enqueue("t.follow_up", {"child": {"n": 1}}, queue=queue)
    async with running_worker(redis_server.url, queue, tracing="otel"):
        info = await client.wait(parent, timeout=30)
        assert isinstance(info.result, str)
        assert (await client.wait(info.result, timeout=30, queue=queue)).status is JobStatus.COMPLETED
    [attempt] = _attempts(spans, parent)
    [sent] = _spans_of(spans, info.result, SpanKind.PRODUCER)
    [child] = _attempts(spans, info.result)
    assert attempt.context is not None and sent.context is not None and child.context is not None
    assert sent.parent is not None and sent.parent.span_id == attempt.context.span_id
    assert child.parent is not None and child.parent.span_id == sent.context.span_id
    assert child.context.trace_id == attempt.context.trace_id
