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
