"""What handler modules open once per worker and close at its end (``@lifespan``).

A database pool or an HTTP client belongs to the process, not to a job: opened per job it costs
a connection a job, and opened at import it is never closed. A lifespan is an async generator:
what comes before its ``yield`` runs before the worker claims its first job, what comes after
it once its last job is settled. What it puts in the dict it receives, every handler reads as
``ctx.resources``. The reasons for the order and the exit codes are in docs/design.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from contextlib import AbstractAsyncContextManager
from typing import Any

from botrix.context import LifespanFunc
from botrix.errors import LifespanError
from botrix.logs import Logger
from botrix.registry import name_of, where


class Lifespans:
    """The worker's lifespans: entered in the order registered, left in reverse."""

    def __init__(self, funcs: list[LifespanFunc], log: Logger) -> None:
        #: Shared with every job's context (JobContext.resources).
        self.resources: dict[str, Any] = {}
        self._funcs = funcs
        self._log = log
        self._entered: list[tuple[LifespanFunc, AbstractAsyncContextManager[None]]] = []

    async def open(self, stop: asyncio.Event, force: asyncio.Event) -> bool:
        """Enter every lifespan; False when ``stop`` came first (what was entered is left again).

        Raises LifespanError when one fails to start, after leaving those entered before it.
        """
        if not self._funcs:
            return True
        opening = asyncio.create_task(self._enter(), name="botrix-lifespans")
        if not await _unless(opening, stop):
            # A stop while a lifespan waits on something down (a database): no job was claimed.
            await self.close(force)
            return False
        failure = opening.exception()
        if failure is not None:
            await self.close(force)
            raise failure
        return True

    async def close(self, force: asyncio.Event) -> None:
        """Leave the entered lifespans, last first; ``force`` (a second stop) abandons the rest.

        A lifespan whose cleanup fails is logged and the others still close: by now every job
        is settled, so nothing is lost.
        """
        if not self._entered:
            return
        closing = asyncio.create_task(self._exit(), name="botrix-lifespans")
        if not await _unless(closing, force):
            self._log.warning(
                "lifespan.abandoned",
                lifespans=[name_of(func) for func, _ in reversed(self._entered)],
                reason="stop forced",
            )

    async def _enter(self) -> None:
        for func in self._funcs:
            name = name_of(func)
            started = time.perf_counter()
            manager = contextlib.asynccontextmanager(func)(self.resources)
            try:
                await manager.__aenter__()
            except Exception as exc:
                place = " ".join(where(exc, func.__module__).split())
                raise LifespanError(f"lifespan {name} failed to start: {place:.1000}") from None
            self._entered.append((func, manager))
            self._log.info("lifespan.opened", lifespan=name, duration_ms=_ms_since(started))

    async def _exit(self) -> None:
        while self._entered:
            func, manager = self._entered[-1]
            name = name_of(func)
            started = time.perf_counter()
            try:
                await manager.__aexit__(None, None, None)
            except Exception as exc:
                error = " ".join(where(exc, func.__module__).split())
                self._log.error("lifespan.failed", lifespan=name, phase="shutdown", error=error)
            else:
                self._log.info("lifespan.closed", lifespan=name, duration_ms=_ms_since(started))
            self._entered.pop()  # (not when cancelled: an abandoned one is reported as such)


async def _unless(task: asyncio.Task[None], event: asyncio.Event) -> bool:
    """Wait for ``task``, cancelling it if ``event`` comes first; whether it ran to its end."""
    waiting = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait((task, waiting), return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait((task,))
    return not task.cancelled()


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)
