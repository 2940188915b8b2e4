"""The worker's Prometheus metrics, on a registry of its own.

Label sets stay bounded: queue names come from configuration, job types only from registered
handlers (anything else is counted as ``unknown``), outcomes from a fixed set, error classes
up to ``MAX_ERROR_LABELS`` (the rest count as ``other``). No job id is ever a label.
"""

from __future__ import annotations

import platform
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from botrix.health import WorkerState

#: The most error classes botrix_job_failures labels one by one; later ones count as "other".
MAX_ERROR_LABELS = 50
#: Job durations from a millisecond to an hour.
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
#: Enqueue-to-start waits: the latency a producer sees before its job runs.
WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


def _per_queue(name: str, documentation: str, values: Mapping[str, float]) -> GaugeMetricFamily:
    """A gauge with one sample per queue."""
    family = GaugeMetricFamily(name, documentation, labels=["queue"])
    for queue, value in values.items():
        family.add_metric([queue], value)
    return family


#: A probe's rule: whether it passes, and why not (the HTTP server's liveness and readiness).
Probe = Callable[[], tuple[bool, str]]


def _unjudged() -> tuple[bool, str]:
    return False, "no HTTP server judges it"


class _ProbeCollector(Collector):
    """The probes' answers as gauges, judged at scrape time by the same rules as /live, /ready."""

    def __init__(self) -> None:
        self.live: Probe = _unjudged
        self.ready: Probe = _unjudged

    def collect(self) -> Iterable[GaugeMetricFamily]:
        for name, probe in (("live", self.live), ("ready", self.ready)):
            yield GaugeMetricFamily(
                f"botrix_worker_{name}",
                f"1 while /{name} answers 200 (its body says why not).",
                value=int(probe()[0]),
            )


class _StateCollector(Collector):
    """Gauges read from the worker's state (and the cached queue depth) at scrape time."""

    def __init__(
        self,
        state: WorkerState,
        depth: Callable[[], Mapping[str, Mapping[str, int]]],
        workers: Callable[[], Mapping[str, int]],
    ) -> None:
        self._state = state
        self._depth = depth
        self._workers = workers

    def collect(self) -> Iterable[GaugeMetricFamily]:
        s = self._state
        yield _per_queue(
            "botrix_jobs_in_progress",
            "Jobs running now.",
            {q: sum(1 for j in s.in_flight.values() if j.queue == q) for q in s.queues},
        )
        yield GaugeMetricFamily("botrix_concurrency", "Configured --concurrency.", value=s.concurrency)
        depth = GaugeMetricFamily(
            "botrix_queue_depth",
            "Jobs in each queue by state (read from Redis, cached briefly).",
            labels=["queue", "state"],
        )
        for queue, states in self._depth().items():
            for name, count in states.items():
                depth.add_metric([queue, name], count)
        yield depth
        yield _per_queue(
            "botrix_queue_workers",
            "Live workers serving the queue, by their health records (read from Redis, cached briefly).",
            self._workers(),
        )
        yield _per_queue(
            "botrix_queue_damaged",
            "1 while a key of the queue holds what botrix never writes: its jobs wait for a repair.",
            {q: int(q in s.damaged) for q in s.queues},
        )
        yield _per_queue(
            "botrix_queue_paused",
            "1 while an operator has paused the queue (botrix pause): no new claims.",
            {q: int(q in s.paused) for q in s.queues},
        )
        yield GaugeMetricFamily(
            "botrix_redis_up", "1 when Redis answered the last check.", value=int(s.redis.up)
        )
        yield GaugeMetricFamily(
            "botrix_redis_rtt_seconds", "Round trip of the last Redis check.", value=s.redis.rtt_s
        )
        yield GaugeMetricFamily(
            "botrix_event_loop_lag_seconds",
            "How late the event loop woke a timer, lately.",
            value=s.loop_lag_s,
        )
        yield GaugeMetricFamily(
            "botrix_uptime_seconds", "Seconds since the worker started.", value=s.uptime()
        )


class _Histogram:
    """One label set's buckets as plain counts: no lock, one bisect per observation."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            out.append((floatToGoString(bound), total))  # type: ignore[no-untyped-call]
        return out


#: One outcome's series: its count (and when it was first counted), its duration histogram,
#: and the retries or dead letters counter it also moves, if any.
_Finished = tuple[list[float], _Histogram, Any]


class _JobCollector(Collector):
    """The three series every job touches, counted in plain Python and exposed at scrape time.

    ``Counter.inc`` and ``Histogram.observe`` take a lock per value; at tens of thousands of
    jobs a second those locks were a tenth of the worker's CPU. Everything runs on the event
    loop's thread (the scrape too), so plain counts are safe, and a custom collector is
    prometheus_client's documented way to expose values kept elsewhere.
    """

    def __init__(self) -> None:
        self.finished: dict[tuple[str, str, str], list[float]] = {}  # labels -> [count, created]
        self.duration: dict[tuple[str, str], _Histogram] = {}
        self.wait: dict[str, _Histogram] = {}

    def collect(self) -> Iterator[Metric]:
        jobs = CounterMetricFamily(
            "botrix_jobs", "Finished attempts by outcome.", labels=["queue", "type", "outcome"]
        )
        for key, (count, created) in self.finished.items():
            jobs.add_metric(key, count, created=created)
        yield jobs
        duration = HistogramMetricFamily(
            "botrix_job_duration_seconds", "Handler run time of an attempt.", labels=["queue", "type"]
        )
        for pair, histogram in self.duration.items():
            duration.add_metric(pair, histogram.buckets(), histogram.sum)
        yield duration
        wait = HistogramMetricFamily(
            "botrix_job_queue_wait_seconds",
            "From when the job could run (enqueue, due time, requeue) to its start.",
            labels=["queue"],
        )
        for queue, histogram in self.wait.items():
            wait.add_metric([queue], histogram.buckets(), histogram.sum)
        yield wait


class _HandlerMetrics(Collector):
    """The application's metrics, served beside botrix's own.

    Those it registered on prometheus_client's default registry (a handler module's
    ``Counter(...)``); not that registry's process, platform and GC metrics: botrix's registry
    has its own, and a family twice in one exposition is an error to Prometheus.
    """

    def collect(self) -> Iterator[Metric]:
        for family in REGISTRY.collect():
            if not (family.name.startswith(("process_", "python_gc_")) or family.name == "python_info"):
                yield family


class Metrics:
    """Every botrix metric; components call the ``job_*`` methods as things happen."""

    def __init__(self, state: WorkerState, handler_types: Iterable[str], version: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._known_types = frozenset(handler_types)
        self.depth_cache: dict[str, dict[str, int]] = {}
        self.workers_cache: dict[str, int] = {}
        # Label lookups cost more than the increments: children are looked up once and kept.
        self._finished: dict[tuple[str, str, str], _Finished] = {}
        r = self.registry
        self._jobs = _JobCollector()
        r.register(self._jobs)
        self.retries = Counter(
            "botrix_job_retries", "Attempts that failed and were rescheduled.", ["queue", "type"], registry=r
        )
        self.dead = Counter("botrix_jobs_dead", "Jobs dead-lettered.", ["queue", "type"], registry=r)
        self.failures = Counter(
            "botrix_job_failures",
            "Failed attempts by the error's class: retried (outcome=retry) or dead-lettered (dead).",
            ["queue", "type", "error", "outcome"],
            registry=r,
        )
        self._errors: set[str] = set()
        self.limited = Counter(
            "botrix_queue_rate_limited",
            "Claims the queue's rate limit (botrix limit) cut short: it is what sets the pace.",
            ["queue"],
            registry=r,
        )
        self.recoveries = Counter(
            "botrix_lease_recoveries",
            "Jobs taken back from an expired lease.",
            ["queue", "outcome"],
            registry=r,
        )
        self.refused = Counter(
            "botrix_acks_refused", "Results refused because the lease was lost.", ["queue"], registry=r
        )
        info = Gauge("botrix_build_info", "botrix version.", ["version", "python"], registry=r)
        info.labels(version, platform.python_version()).set(1)
        r.register(_StateCollector(state, lambda: self.depth_cache, lambda: self.workers_cache))
        self._probes = _ProbeCollector()
        r.register(self._probes)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)  # gc.get_stats() at scrape time: nothing per job
        r.register(_HandlerMetrics())  # read at each scrape: metrics made later are served too

    def serve_probes(self, live: Probe, ready: Probe) -> None:
        """Judge botrix_worker_live and _ready by these rules (the HTTP server's, which serves them)."""
        self._probes.live, self._probes.ready = live, ready

    def job_type(self, name: str) -> str:
        """The label for a job type: its name if a handler is registered, else ``unknown``."""
        return name if name in self._known_types else "unknown"

    def job_started(self, queue: str, wait_s: float) -> None:
        """An attempt started ``wait_s`` after its job was enqueued (or fell due)."""
        histogram = self._jobs.wait.get(queue)
        if histogram is None:
            histogram = self._jobs.wait[queue] = _Histogram(WAIT_BUCKETS)
        histogram.observe(max(0.0, wait_s))

    def job_finished(self, queue: str, job_type: str, outcome: str, duration_s: float | None) -> None:
        """An attempt's outcome was written (completed, retry, dead, requeue), or it was cancelled."""
        # A registered type is its own label: looked up as given, it costs no call.
        children = self._finished.get((queue, job_type, outcome))
        if children is None:
            children = self._children(queue, self.job_type(job_type), outcome)
        count, duration, extra_count = children
        count[0] += 1
        if duration_s is not None:
            duration.observe(duration_s)
        if extra_count is not None:
            extra_count.inc()

    def _children(self, queue: str, label: str, outcome: str) -> _Finished:
        # Keyed by the label, not the type as sent: a producer sending many unregistered types
        # must not grow this cache.
        key = (queue, label, outcome)
        children = self._finished.get(key)
        if children is None:
            extra = {"retry": self.retries, "dead": self.dead}.get(outcome)
            count = self._jobs.finished.setdefault(key, [0, time.time()])
            duration = self._jobs.duration.setdefault((queue, label), _Histogram(DURATION_BUCKETS))
            extra_count = extra.labels(queue, label) if extra is not None else None
            children = self._finished[key] = (count, duration, extra_count)
        return children

    def job_failed(self, queue: str, job_type: str, error: str, outcome: str) -> None:
        """An attempt failed with ``error`` (an exception's class name) and was retried or dead."""
        # Class names are few in a codebase, but one made per failure (type() in a loop) would
        # grow a series each: past MAX_ERROR_LABELS distinct names the rest count as "other".
        if error not in self._errors:
            if len(self._errors) >= MAX_ERROR_LABELS:
                error = "other"
            else:
                self._errors.add(error)
        self.failures.labels(queue, self.job_type(job_type), error, outcome).inc()

    def rate_limited(self, queue: str) -> None:
        """The queue's rate limit cut a claim short."""
        self.limited.labels(queue).inc()

    def dead_at_claim(self, queue: str, error: str) -> None:
        """The claim dead-lettered an entry no handler saw: its type is not known."""
        self.dead.labels(queue, "unknown").inc()
        self.job_failed(queue, "unknown", error, "dead")

    def ack_refused(self, queue: str) -> None:
        """A late result was refused by the fencing token."""
        self.refused.labels(queue).inc()

    def recovered(self, queue: str, outcome: str, job_type: str) -> None:
        """The recoverer took back a job: ``queued`` again or ``dead``."""
        self.recoveries.labels(queue, outcome).inc()
        if outcome == "dead":
            self.dead.labels(queue, self.job_type(job_type)).inc()
            self.job_failed(queue, job_type, "LeaseExpired", "dead")  # the record's error type
