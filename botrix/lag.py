"""Measures how late the event loop runs timers: a blocking handler shows up here.

A handler that calls ``time.sleep`` or does CPU work without yielding stalls every job, the
lease renewals and the probes at once. The monitor sleeps a short, fixed interval and records
how much later than asked it woke; ``/live`` and the ``botrix_event_loop_lag_seconds`` gauge
report the worst lag of the recent window.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from botrix.aio import sleep_or_stop
from botrix.health import WorkerState

#: How often the loop is sampled.
INTERVAL_S = 0.25
#: How long a lag stays visible after it happened (so probes see a block that has ended).
WINDOW_S = 10.0


class LagMonitor:
    """Samples event-loop lag into the worker state."""

    def __init__(self, state: WorkerState) -> None:
        self._state = state
        self._samples: deque[tuple[float, float]] = deque()

    async def run(self, stop: asyncio.Event) -> None:
        """Sample until ``stop``."""
        while True:
            asked = time.monotonic()
            if await sleep_or_stop(stop, INTERVAL_S):
                return
            now = time.monotonic()
            self._record(now, max(0.0, now - asked - INTERVAL_S))

    def _record(self, now: float, lag: float) -> None:
        samples = self._samples
        samples.append((now, lag))
        while samples and samples[0][0] < now - WINDOW_S:
            samples.popleft()
        self._state.loop_lag_s = max(s[1] for s in samples)
        self._state.last_loop_tick = now
