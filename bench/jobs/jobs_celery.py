# mypy: allow-untyped-decorators
"""Celery tasks for the benchmark: ``celery -A jobs_celery worker --pool threads -c N``."""

from __future__ import annotations

import time

import probe
from _settings import REDIS_URL
from celery import Celery

app = Celery("bench", broker=REDIS_URL)


@app.task(name="noop")
def noop() -> None:
    """Do nothing (drain scenario)."""
    probe.ran()


@app.task(name="sleep")
def sleep(s: float) -> None:
    """Sleep ``s`` seconds in the pool thread (I/O-bound scenario)."""
    probe.started()
    time.sleep(s)
    probe.finished()


@app.task(name="lat")
def lat(t: float) -> None:
    """Record enqueue-to-start from ``t`` (latency scenario)."""
    probe.started(t)
    probe.finished()
