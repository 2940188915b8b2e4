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

#: After a cancel (a stop while one opens, or a forced stop while they close), how long the
#: lifespans' task gets to end before it is left behind.
CANCEL_GRACE_S = 1.0


class Lifespans:
    """The worker's lifespans: entered in the order registered, left in reverse.

    Both halves of every lifespan run in one task, as they would in a plain ``async with``:
    context variables set before the ``yield`` (a tracing span, a task group) are there after.
    """

    def __init__(self, funcs: list[LifespanFunc], log: Logger) -> None:
        #: Shared with every job's context (JobContext.resources).
        self.resources: dict[str, Any] = {}
        self._funcs = funcs
        self._log = log
        self._entered: list[tuple[LifespanFunc, AbstractAsyncContextManager[None]]] = []
        self._opened = asyncio.Event()
        self._release = asyncio.Event()
        self._failure: LifespanError | None = None
        self._task: asyncio.Task[None] | None = None
        self._cancelled = False  # by us: a stop, not a lifespan's own CancelledError

    async def open(self, stop: asyncio.Event, force: asyncio.Event) -> bool:
        """Enter every lifespan; False when ``stop`` came first (what was entered is left again).

        Raises LifespanError when one fails to start, after leaving those entered before it.
        """
        if not self._funcs:
            return True
        task = self._task = asyncio.create_task(self._hold(stop), name="botrix-lifespans")
        try:
            await _first(task, self._opened, stop)
        except BaseException:  # our caller is cancelled: nothing may stay open behind it
            await self._cancel(task, None)
            raise
        if self._opened.is_set():
            return True
        if not task.done():
            # A stop while a lifespan waits on something down (a database): no job was claimed.
            await self._cancel(task, force)
            return False
        if self._failure is not None:
            raise self._failure
        return False  # the stop came between two lifespans

    async def close(self, force: asyncio.Event) -> None:
        """Leave the entered lifespans, last first; ``force`` (a second stop) abandons the rest.

        A lifespan whose cleanup fails is logged and the others still close.
        """
        task = self._task
        if task is None or task.done():
            return
        self._release.set()
        await _first(task, force)
        if not task.done():
            await self._cancel(task, None)

    async def _cancel(self, task: asyncio.Task[None], force: asyncio.Event | None) -> None:
        """Cancel the lifespans' task and let it close what it entered, until ``force`` and a grace."""
        self._cancelled = True
        task.cancel()
        if force is not None:
            await _first(task, force)
            if not task.done():
                task.cancel()
        await asyncio.wait((task,), timeout=CANCEL_GRACE_S)
        if self._entered:
            self._log.warning(
                "lifespan.abandoned",
                lifespans=[name_of(func) for func, _ in reversed(self._entered)],
                reason="stop forced" if force is None or force.is_set() else "cancelled",
            )

    async def _hold(self, stop: asyncio.Event) -> None:
        """Enter them all, wait for :meth:`close`, leave them all: the lifespans' one task."""
        try:
            for func in self._funcs:
                if stop.is_set():
                    return
                await self._enter(func)
            if stop.is_set():
                return  # (one that swallowed the stop's cancel and finished opening)
            self._opened.set()
            await self._release.wait()
        except LifespanError as exc:
            self._failure = exc
        finally:
            await self._exit_all()

    async def _enter(self, func: LifespanFunc) -> None:
        name = name_of(func)
        started = time.perf_counter()
        manager = contextlib.asynccontextmanager(func)(self.resources)
        try:
            await manager.__aenter__()
        except asyncio.CancelledError:
            if self._cancelled:
                raise
            # Its own, not a stop's: a failure like any other (exit 1, so that it is retried).
            raise LifespanError(f"lifespan {name} failed to start: it raised CancelledError") from None
        except BaseException as exc:  # sys.exit() too: one clear line rather than a traceback
            place = " ".join(where(exc, func.__module__).split())
            raise LifespanError(f"lifespan {name} failed to start: {place:.1000}") from None
        self._entered.append((func, manager))
        self._log.info("lifespan.opened", lifespan=name, duration_ms=_ms_since(started))

    async def _exit_all(self) -> None:
        while self._entered:
            func, manager = self._entered[-1]
            name = name_of(func)
            started = time.perf_counter()
            try:
                await manager.__aexit__(None, None, None)
            except asyncio.CancelledError:
                if self._cancelled:
                    raise  # forced: the rest is abandoned (_cancel says so)
                self._log.error("lifespan.failed", lifespan=name, phase="shutdown", error="CancelledError")
            except BaseException as exc:  # every job is settled: log it, close the others
                error = " ".join(where(exc, func.__module__).split())
                self._log.error("lifespan.failed", lifespan=name, phase="shutdown", error=error)
            else:
                self._log.info("lifespan.closed", lifespan=name, duration_ms=_ms_since(started))
            self._entered.pop()


async def _first(task: asyncio.Task[None], *events: asyncio.Event) -> None:
    """Wait until ``task`` ends or one of ``events`` is set."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait((task, *waits), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)
