"""Small asyncio helpers shared by the components."""

from __future__ import annotations

import asyncio
import random


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``; return True at once if ``stop`` is (or becomes) set."""
    if stop.is_set():
        return True
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        return False
    return True


class Deadline:
    """Cancels the current task after ``seconds``, unless :meth:`cancel` comes first.

    A plain timer, for what runs once a job or once a call: ``asyncio.timeout`` costs several
    times as much. After a ``CancelledError``, :meth:`fired` tells this deadline's cancellation
    apart from one asked from outside (shutdown, a lost lease), as ``asyncio.timeout`` does.
    """

    __slots__ = ("_cancelling", "_fired", "_timer", "task")

    def __init__(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        assert task is not None
        self.task = task
        self._cancelling = task.cancelling()  # cancellations asked before this one are not ours
        self._fired = False
        self._timer = loop.call_later(seconds, self._expire)

    def _expire(self) -> None:
        self._fired = True
        self.task.cancel()

    def fired(self) -> bool:
        """Whether the ``CancelledError`` being handled is this deadline's; if so, it is taken back."""
        return self._fired and self.task.uncancel() <= self._cancelling

    def cancel(self) -> None:
        """Disarm the timer (always, once the guarded work is over)."""
        self._timer.cancel()


class Backoff:
    """Delays for riding out an outage: doubling from ``base`` to ``cap``, with jitter."""

    def __init__(self, base: float = 0.1, cap: float = 5.0) -> None:
        self._base = base
        self._cap = cap
        self._failures = 0

    def next(self) -> float:
        """The next delay; grows with each failure since the last :meth:`reset`."""
        self._failures += 1
        ceiling = min(self._cap, self._base * 2 ** min(self._failures, 30))
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        """Start over after a success."""
        self._failures = 0
