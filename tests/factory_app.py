"""A lifespan that chains a task factory over the worker's, as an error tracker's integration does
(``--app tests.factory_app``): it must see every job's task, and handlers' tasks stay contained."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Coroutine, Generator
from typing import Any

from botrix import JobContext, handler, lifespan

#: The tasks the chained factory made.
_SEEN: weakref.WeakSet[asyncio.Future[Any]] = weakref.WeakSet()


@lifespan
async def chain_a_task_factory(resources: dict[str, Any]) -> AsyncIterator[None]:
    loop = asyncio.get_running_loop()
    inner = loop.get_task_factory()

    def factory(
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, Any] | Generator[Any, None, Any],
        **kwargs: Any,
    ) -> asyncio.Future[Any]:
        task = inner(loop, coro, **kwargs) if inner else asyncio.Task(coro, loop=loop, **kwargs)
        _SEEN.add(task)
        return task

    loop.set_task_factory(factory)
    yield


@handler("f.seen")
async def seen(ctx: JobContext, payload: Any) -> bool:
    """Whether the chained factory made this job's task."""
    return asyncio.current_task() in _SEEN


async def _exits() -> None:
    raise SystemExit(0)


@handler("f.exit_in_task", max_retries=0)
async def exit_in_task(ctx: JobContext, payload: Any) -> None:
    await asyncio.gather(_exits())
