"""Queues an operator paused (``botrix pause``): the runner claims nothing from them.

The pause is a key in Redis that the claim reads (exchange.lua), so every worker obeys it on
its next claim, with nothing to tell them. A paused queue's backlog would answer the waker's
BLMOVE at once, so its watcher is paused too, and the runner looks again once a second, with a
claim: that claim is what notices ``botrix resume``. Jobs already running finish and settle as
usual; only new claims stop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from botrix.health import WorkerState
from botrix.logs import Logger
from botrix.waker import Waker

#: How often a paused queue is looked at again.
RECHECK_S = 1.0


class Pauses:
    """Which served queues are paused, as the last claim on each found them."""

    def __init__(self, waker: Waker, state: WorkerState, log: Logger, look_again: Callable[[], None]) -> None:
        self._waker = waker
        self._state = state
        self._log = log
        self._look_again = look_again
        self._until: dict[str, float] = {}  # paused queue -> when to claim from it again
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def skip(self, queue: str) -> bool:
        """True while ``queue`` is paused and not yet due for another look."""
        until = self._until.get(queue)
        return until is not None and until > asyncio.get_running_loop().time()

    def saw(self, queue: str, paused: bool) -> None:
        """What a claim on ``queue`` found."""
        loop = asyncio.get_running_loop()
        if not paused:
            if self._until.pop(queue, None) is not None:
                timer = self._timers.pop(queue, None)
                if timer is not None:
                    timer.cancel()
                self._state.paused.discard(queue)
                self._waker.resume(queue, "paused")
                self._log.info("queue.resumed", queue=queue)
            return
        if queue not in self._until:
            self._state.paused.add(queue)
            self._waker.pause(queue, "paused")
            self._log.info("queue.paused", queue=queue, reason="botrix pause: no new claims until resumed")
        self._until[queue] = loop.time() + RECHECK_S
        if queue not in self._timers:
            self._timers[queue] = loop.call_later(RECHECK_S, self._due, queue)

    def _due(self, queue: str) -> None:
        self._timers.pop(queue, None)
        # The look is a claim, which a pass makes only when the clock says the pause is due: a
        # timer may fire a fraction of a millisecond early (uvloop rounds to whole ms).
        if queue in self._until:
            self._until[queue] = 0.0
            self._look_again()
