# mypy: allow-untyped-decorators
"""Dramatiq actors for the benchmark: ``dramatiq jobs_dramatiq --processes 1 --threads N``."""

from __future__ import annotations

import time

import dramatiq
import probe
from _settings import QUEUE, REDIS_URL
from dramatiq.brokers.redis import RedisBroker

broker = RedisBroker(url=REDIS_URL)
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE)
def noop() -> None:
    """Do nothing (drain scenario)."""
    probe.ran()


@dramatiq.actor(queue_name=QUEUE)
def sleep(s: float) -> None:
    """Sleep ``s`` seconds in the worker thread (I/O-bound scenario)."""
    probe.started()
    time.sleep(s)
    probe.finished()


@dramatiq.actor(queue_name=QUEUE)
def lat(t: float) -> None:
    """Record enqueue-to-start from ``t`` (latency scenario)."""
    probe.started(t)
    probe.finished()
