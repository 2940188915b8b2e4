"""Median, min and max of each figure over the repetitions of one configuration."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

#: The figures a run can report, and whether more is better.
METRICS: dict[str, bool] = {
    "jobs_per_s": True,
    "cpu_ms_per_job": False,
    "redis_cpu_ms_per_job": False,
    "rss_mb": False,
    "queued_bytes_per_job": False,
    "p50_ms": False,
    "p99_ms": False,
    "max_ms": False,
    "bytes_per_job": False,
    "startup_s": False,
    "backlog_after_stop": False,
}


@dataclass(frozen=True)
class Figure:
    """One figure over the runs: median, min, max, and how many runs gave it."""

    median: float
    low: float
    high: float
    runs: int


Key = tuple[str, str, int, int]


def key_of(result: dict[str, Any]) -> Key:
    """(scenario, system, concurrency, processes): the configuration a run belongs to."""
    return (result["scenario"], result["system"], result["concurrency"], result["processes"])


def summarize(results: list[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    """Group runs by configuration; each metric becomes a :class:`Figure`, plus n and errors."""
    groups: dict[Key, list[dict[str, Any]]] = defaultdict(list)
    for result in results:
        groups[key_of(result)].append(result)
    out: dict[Key, dict[str, Any]] = {}
    for key, runs in groups.items():
        good = [r for r in runs if "error" not in r]
        entry: dict[str, Any] = {
            "n": runs[0]["n"],
            "errors": [r["error"] for r in runs if "error" in r],
            "runs": len(good),
        }
        for metric in METRICS:
            values = [r[metric] for r in good if metric in r]
            if values:
                entry[metric] = Figure(statistics.median(values), min(values), max(values),
                                       len(values))  # fmt: skip
        out[key] = entry
    return out
