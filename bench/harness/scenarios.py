"""The scenarios of issue 5 as lists of runs, for the full benchmark and the quick one."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from harness.adapters import load
from harness.runner import RunSpec

#: The sleep of each I/O-bound job (the producer puts it in the payload), seconds.
IO_SLEEP_S = 0.05
#: Systems of the scale scenario: botrix beside the bare loop (own connection, then redis-py).
CEILING = ("botrix", "limit", "limitpy")
#: Systems of the memory scenario (limitpy queues exactly what limit does).
MEMORY = ("botrix", "limit")


@dataclass(frozen=True)
class Plan:
    """Sizes of every scenario; ``full()`` and ``quick()`` are the two used by the Makefile."""

    systems: tuple[str, ...]
    runs: int = 3
    headline_concurrency: int = 10
    drain_n: int = 10_000
    latency_n: int = 500
    latency_rate: float = 100.0
    io_n: int = 20_000
    io_concurrency: int = 200
    #: botrix and the bare loop also run the I/O-bound scenario at this concurrency (None: skip).
    io_high_concurrency: int | None = 1000
    scale_n: int = 20_000
    scale_concurrency: tuple[int, ...] = (1, 10, 100, 1000)
    #: Two worker processes at this concurrency each, against one (None: skip).
    scale_processes_concurrency: int | None = 10
    memory_n: int = 100_000
    scenarios: tuple[str, ...] = ("drain", "latency", "io", "scale", "memory")
    #: Per-system drain sizes where the default would take minutes (noted in the report).
    drain_n_override: dict[str, int] = field(default_factory=dict)

    @classmethod
    def full(cls, systems: tuple[str, ...], runs: int = 3) -> Plan:
        """Issue 5's sizes; arq and RQ drain 3,000 jobs (at ~200-300 jobs/s, 10,000 take ~45 s)."""
        return cls(systems=systems, runs=runs, drain_n_override={"arq": 3000, "rq": 3000})

    @classmethod
    def quick(cls, runs: int = 3) -> Plan:
        """About a minute: botrix (and the bare loop as its yardstick), small N."""
        return cls(
            systems=("botrix",),
            runs=runs,
            drain_n=5000,
            latency_n=100,
            io_n=4000,
            scale_n=10_000,
            scale_concurrency=(100,),
            scale_processes_concurrency=None,
            io_high_concurrency=None,
            scenarios=("drain", "latency", "io", "scale"),
        )

    def io_n_for(self, system: str, concurrency: int) -> int:
        """The async systems get ``io_n``; slower thread pools get a run of the same ideal length."""
        ideal_s = self.io_n / (self.io_concurrency / IO_SLEEP_S)
        return min(self.io_n, max(100, round(concurrency / IO_SLEEP_S * ideal_s)))


def _timeout(n: int, floor_rate: float = 100.0) -> float:
    return 60.0 + n / floor_rate


def _repetition(plan: Plan) -> Iterator[RunSpec]:
    c = plan.headline_concurrency
    if "drain" in plan.scenarios:
        for system in plan.systems:
            n = plan.drain_n_override.get(system, plan.drain_n)
            yield RunSpec(system, "drain", "drain", n, c, timeout=_timeout(n))
    if "latency" in plan.scenarios:
        for system in plan.systems:
            yield RunSpec(system, "latency", "latency", plan.latency_n, c,
                          rate=plan.latency_rate, timeout=60 + plan.latency_n / 20)  # fmt: skip
    if "io" in plan.scenarios:
        for system in plan.systems:
            io_c = load(system).io_concurrency(plan.io_concurrency)
            n = plan.io_n_for(system, io_c)
            yield RunSpec(system, "io", "drain", n, io_c, kind="sleep", timeout=_timeout(n, 10))
    if "scale" in plan.scenarios:
        for system in CEILING:
            for sc in plan.scale_concurrency:
                n = plan.scale_n if sc > 1 else plan.scale_n // 2  # c=1 is ~10x slower
                yield RunSpec(system, "scale", "drain", n, sc, timeout=_timeout(n))
            if plan.scale_processes_concurrency is not None:
                yield RunSpec(system, "scale", "drain", plan.scale_n,
                              plan.scale_processes_concurrency, processes=2,
                              timeout=_timeout(plan.scale_n))  # fmt: skip
            if plan.io_high_concurrency is not None and system != "limitpy":
                yield RunSpec(system, "io-high", "drain", plan.io_n, plan.io_high_concurrency,
                              kind="sleep", timeout=_timeout(plan.io_n, 10))  # fmt: skip
    if "memory" in plan.scenarios:
        for system in MEMORY:
            yield RunSpec(system, "memory", "memory", plan.memory_n, timeout=600)


def specs(plan: Plan) -> list[RunSpec]:
    """Every run, repetitions interleaved (all systems once, then again) to spread out noise."""
    out: list[RunSpec] = []
    for rep in range(plan.runs):
        out.extend(RunSpec(**{**spec.__dict__, "labels": {"rep": rep + 1}}) for spec in _repetition(plan))
    return out
