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
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from botrix.context import LifespanFunc
from botrix.errors import LifespanError
from botrix.logs import Logger
from botrix.registry import name_of, where

#: After a forced stop (or our caller's cancel), how long the lifespans' task gets to end
#: before it is left behind.
CANCEL_GRACE_S = 1.0


class Lifespans:
    """The worker's lifespans: entered in the order registered, left in reverse.

    Both halves of every lifespan run in one task, as they would in a plain ``async with``:
    context variables set before the ``yield`` (a tracing span, a task group) are there after.
    """

    def __init__(self, funcs: list[LifespanFunc], log: Logger, lost: Callable[[str], None]) -> None:
        #: Shared with every job's context (JobContext.resources).
        self.resources: dict[str, Any] = {}
        self._funcs = funcs
        self._log = log
        self._lost = lost  # told when they end while the worker runs: it must not run on
        self._entered: list[tuple[LifespanFunc, AbstractAsyncContextManager[None]]] = []
        self._starting: LifespanFunc | None = None
        self._opened = asyncio.Event()
        self._release = asyncio.Event()
        self._failure: LifespanError | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False  # we cancelled the task: a stop, not a lifespan's own doing
        self._closing = False  # the task is leaving what it entered

    async def open(self, stop: asyncio.Event, force: asyncio.Event) -> bool:
        """Enter every lifespan; False when ``stop`` came first (what was entered is left again).

        Raises LifespanError when one fails to start, after leaving those entered before it.
        """
        if not self._funcs:
            return True
        task = self._task = asyncio.create_task(self._hold(stop), name="botrix-lifespans")
        try:
            await _first(task, self._opened, stop)
            if not self._opened.is_set() and not task.done():
                if not self._closing:
                    # A stop while one opens (on a database that does not answer): cancelled.
                    self._stopping = True
                    task.cancel()
                # (closing after a failure: that failure is what the worker must report)
                await _first(task, force)
        except BaseException:  # our caller is cancelled: nothing may stay open behind it
            await self._abandon(task, "cancelled")
            raise
        if not task.done() and not self._opened.is_set():
            await self._abandon(task, "stop forced")
        if self._failure is not None:
            raise self._failure
        return self._opened.is_set()

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
            await self._abandon(task, "stop forced")

    async def _abandon(self, task: asyncio.Task[None], reason: str) -> None:
        """Cancel the lifespans' task, give it a grace, and name what it leaves behind."""
        if not task.done():
            self._stopping = True
            task.cancel()
            await asyncio.wait((task,), timeout=CANCEL_GRACE_S)
        left = [name_of(func) for func, _ in reversed(self._entered)]
        starting = self._starting
        if left or starting is not None:
            self._log.warning(
                "lifespan.abandoned",
                lifespans=left,
                starting=None if starting is None else name_of(starting),
                reason=reason,
            )

    async def _hold(self, stop: asyncio.Event) -> None:
        """Enter them all, wait for :meth:`close`, leave them all: the lifespans' one task."""
        me = asyncio.current_task()
        assert me is not None
        lost = False
        try:
            for func in self._funcs:
                if stop.is_set() or self._stopping:
                    break
                await self._enter(func)
            else:
                if not (stop.is_set() or self._stopping):
                    self._opened.set()
                    await self._release.wait()
        except asyncio.CancelledError:
            # Not ours, it is a task group a lifespan holds across its yield, cancelling it as
            # one of its tasks failed: what the lifespans opened is going away with them.
            lost = not self._stopping
            if me.uncancel() and not lost:
                raise  # a second cancel (a forced stop) came meanwhile: the cleanups are skipped
        except LifespanError as exc:
            self._failure = exc
        self._closing = True
        errors = await self._exit_all(me)
        if lost:
            self._lost("; ".join(["the lifespans were cancelled while the worker ran", *errors]))

    async def _enter(self, func: LifespanFunc) -> None:
        name = name_of(func)
        started = time.perf_counter()
        manager = contextlib.asynccontextmanager(func)(self.resources)
        self._starting = func
        try:
            await manager.__aenter__()
        except asyncio.CancelledError:
            if self._stopping:
                raise
            # Its own, not a stop's: a failure like any other (exit 1, so that it is retried).
            raise LifespanError(
                f"lifespan {name} failed to start: it was cancelled, not by a stop (by a task group"
                " an earlier lifespan holds across its yield, whose task failed?)"
            ) from None
        except BaseException as exc:  # sys.exit() too: one clear line rather than a traceback
            place = " ".join(where(exc, func.__module__).split())
            raise LifespanError(f"lifespan {name} failed to start: {place:.1000}") from None
        finally:
            self._starting = None
        self._entered.append((func, manager))
        self._log.info("lifespan.opened", lifespan=name, duration_ms=_ms_since(started))

    async def _exit_all(self, me: asyncio.Task[None]) -> list[str]:
        """Leave what was entered, last first; what failed, as ``lifespan: error`` lines."""
        errors = []
        while self._entered:
            func, manager = self._entered[-1]
            name = name_of(func)
            started = time.perf_counter()
            try:
                await manager.__aexit__(None, None, None)
            except asyncio.CancelledError:
                if me.cancelling():
                    raise  # a forced stop: the rest is abandoned (_abandon names it)
                errors.append(f"{name}: CancelledError")
                self._log.error("lifespan.failed", lifespan=name, phase="shutdown", error="CancelledError")
            except BaseException as exc:  # every job is settled: log it, close the others
                error = " ".join(where(exc, func.__module__).split())[:1000]
                errors.append(f"{name}: {error}")
                self._log.error("lifespan.failed", lifespan=name, phase="shutdown", error=error)
            else:
                self._log.info("lifespan.closed", lifespan=name, duration_ms=_ms_since(started))
            self._entered.pop()
        return errors


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
