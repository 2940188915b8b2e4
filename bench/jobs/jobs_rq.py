"""RQ job functions for the benchmark: ``rq worker -w rq.worker.SimpleWorker default``."""

from __future__ import annotations

import time

import probe


def noop() -> None:
    """Do nothing (drain scenario)."""
    probe.ran()


def sleep(s: float) -> None:
    """Sleep ``s`` seconds (I/O-bound scenario)."""
    probe.started()
    time.sleep(s)
    probe.finished()


def lat(t: float) -> None:
    """Record enqueue-to-start from ``t`` (latency scenario)."""
    probe.started(t)
    probe.finished()
