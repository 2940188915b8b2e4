"""Watches a run: probe counts for completion, CPU samples of the workers and of Redis.

One thread polls every ``interval`` seconds: it sums the probe files' counts (the completion
signal) and samples the CPU seconds of the worker process trees and of redis-server. CPU at
the first start and at the last done is interpolated between samples afterwards.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable
from pathlib import Path

import probe

from harness import procstat


class Monitor:
    """Background sampler of one run; ``wait(count)`` blocks until the probes reach ``count``."""

    def __init__(
        self, probe_dir: Path, worker_pids: list[int], redis_pid: int, interval: float = 0.005
    ) -> None:
        self._probe_dir = probe_dir
        self._roots = worker_pids
        self._redis_pid = redis_pid
        self._interval = interval
        self._pids: list[int] = list(worker_pids)
        self.times: list[float] = []
        self.worker_cpu: list[float] = []
        self.redis_cpu: list[float] = []
        self.count = 0
        self._stop = threading.Event()
        self._reached = threading.Event()
        self._target = -1
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="bench-monitor", daemon=True)

    def start(self) -> Monitor:
        """Start sampling."""
        self._thread.start()
        return self

    def pids(self) -> list[int]:
        """Every worker process seen so far (roots and their children)."""
        with self._lock:
            return list(self._pids)

    def _refresh_pids(self) -> None:
        seen = set(self._pids)
        for root in self._roots:
            seen.update(procstat.tree(root))
        with self._lock:
            self._pids = sorted(seen)

    def _loop(self) -> None:
        tick = 0
        while not self._stop.is_set():
            if tick % 40 == 0:
                self._refresh_pids()
            tick += 1
            now = time.time()
            self.count = sum(c.count for c in probe.read_dir(self._probe_dir))
            self.times.append(now)
            self.worker_cpu.append(procstat.cpu_total(self._pids))
            self.redis_cpu.append(procstat.cpu_seconds(self._redis_pid))
            if 0 <= self._target <= self.count:
                self._reached.set()
            time.sleep(self._interval)

    def wait(self, count: int, timeout: float, alive: Callable[[], bool] = lambda: True) -> bool:
        """Block until the probes have counted ``count`` finished jobs; False on timeout.

        Raises ``RuntimeError`` as soon as ``alive()`` says the workers are gone.
        """
        self._reached.clear()
        self._target = count
        deadline = time.monotonic() + timeout
        while not self._reached.wait(min(0.25, max(0.0, deadline - time.monotonic()))):
            if not alive():
                msg = f"worker exited with {self.count}/{count} jobs done (see its log)"
                raise RuntimeError(msg)
            if time.monotonic() >= deadline:
                return False
        return True

    def stop(self) -> None:
        """Stop sampling (samples stay readable)."""
        self._stop.set()
        self._thread.join()

    def cpu_between(self, t0: float, t1: float, series: str = "worker") -> float:
        """CPU seconds spent between wall times ``t0`` and ``t1`` (linear between samples)."""
        values = self.worker_cpu if series == "worker" else self.redis_cpu
        return _interp(self.times, values, t1) - _interp(self.times, values, t0)


def _interp(xs: list[float], ys: list[float], x: float) -> float:
    if not xs:
        return 0.0
    i = bisect.bisect_left(xs, x)
    if i <= 0:
        return ys[0]
    if i >= len(xs):
        return ys[-1]
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
