"""Queues the runner claims nothing from for a while: paused, or at their rate limit.

Both live in Redis and the claim reads them (exchange.lua), so every worker obeys them on its
next claim, with nothing to tell them. ``botrix pause`` stops claims until ``botrix resume``;
``botrix limit`` lets at most so many jobs start per window, and a claim it cut short says when
the next one may start. Either way the queue's backlog would answer the waker's BLMOVE at once,
so its watcher is paused too, and the runner looks again with a claim: after RECHECK_S for a
pause, at the limit's time (RECHECK_S at most, so a raised or lifted limit is seen) for a limit.
Jobs already running finish and settle as usual; only new claims stop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from botrix.health import WorkerState
from botrix.logs import Logger
from botrix.metrics import Metrics
from botrix.waker import Waker

#: How often a paused queue is looked at again, and a rate-limited one at the latest.
RECHECK_S = 1.0
#: The shortest wait at a rate limit. Every limited worker learns the same moment a claim frees
#: up, and a limit full of small claims frees one every millisecond: without a floor, each
#: worker would send a claim a millisecond, mostly to be told "limited" again.
LIMIT_MIN_WAIT_S = 0.01

PAUSED = "paused"
LIMITED = "limited"


class Pauses:
    """Which served queues are paused or at their rate limit, as the last claim on each found."""

    def __init__(
        self,
        waker: Waker,
        state: WorkerState,
        log: Logger,
        metrics: Metrics,
        look_again: Callable[[], None],
    ) -> None:
        self._waker = waker
        self._state = state
        self._log = log
        self._metrics = metrics
        self._look_again = look_again
        self._why: dict[str, str] = {}  # queue -> PAUSED or LIMITED
        self._until: dict[str, float] = {}  # when to claim from it again (loop time)
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def skip(self, queue: str) -> bool:
        """True while ``queue`` is paused or limited and not yet due for another look."""
        until = self._until.get(queue)
        return until is not None and until > asyncio.get_running_loop().time()

    def saw(self, queue: str, paused: bool, limited_s: float) -> None:
        """What a claim on ``queue`` found: paused, or cut short by its limit for ``limited_s``."""
        why = PAUSED if paused else LIMITED if limited_s > 0 else None
        was = self._why.get(queue)
        if why != was:
            self._leave(queue, was)
            if why is None:
                return
            self._why[queue] = why
            self._waker.pause(queue, why)
            if why == PAUSED:
                self._state.paused.add(queue)
                self._log.info(
                    "queue.paused", queue=queue, reason="botrix pause: no new claims until resumed"
                )
            else:
                self._state.limited.add(queue)
        if why is None:
            return
        if why == LIMITED:
            self._metrics.rate_limited(queue)
        delay = RECHECK_S if why == PAUSED else min(max(limited_s, LIMIT_MIN_WAIT_S), RECHECK_S)
        loop = asyncio.get_running_loop()
        self._until[queue] = loop.time() + delay
        timer = self._timers.pop(queue, None)
        if timer is not None:
            timer.cancel()
        self._timers[queue] = loop.call_later(delay, self._due, queue)

    def _leave(self, queue: str, why: str | None) -> None:
        if why is None:
            return
        del self._why[queue]
        self._until.pop(queue, None)
        timer = self._timers.pop(queue, None)
        if timer is not None:
            timer.cancel()
        self._waker.resume(queue, why)
        if why == PAUSED:
            self._state.paused.discard(queue)
            self._log.info("queue.resumed", queue=queue)
        else:
            self._state.limited.discard(queue)

    def _due(self, queue: str) -> None:
        self._timers.pop(queue, None)
        # The look is a claim, which a pass makes only when the clock says the wait is over: a
        # timer may fire a fraction of a millisecond early (uvloop rounds to whole ms).
        if queue in self._until:
            self._until[queue] = 0.0
            self._look_again()
