"""Handlers sharing what two lifespans open (``--app tests.lifespan_app``), for the tests of lifespans.

Each lifespan appends what it does to the file named by BOTRIX_TEST_LIFESPAN_TRACE, as does
the slow handler, so a test reads the order things happened in. BOTRIX_TEST_LIFESPAN_MODE makes
the second lifespan fail to start (``fail_start``, ``exit_start``, ``cancel_start``; with
``fail_start_slow_close`` the first's cleanup then waits for a file), wait forever to start
(``hang_start``), fail its cleanup (``fail_close``) or end while the worker runs (``lose``).
"""

from __future__ import annotations

import asyncio
import contextvars
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from botrix import JobContext, handler, lifespan

MODE = os.environ.get("BOTRIX_TEST_LIFESPAN_MODE", "")
#: Set before the first lifespan's yield and reset after: only in the same context (task).
_OPEN: contextvars.ContextVar[bool] = contextvars.ContextVar("botrix_test_open", default=False)


def trace(line: str) -> None:
    with open(os.environ["BOTRIX_TEST_LIFESPAN_TRACE"], "a", encoding="utf-8") as fh:
        fh.write(line + "\n")


@lifespan
async def first(resources: dict[str, Any]) -> AsyncIterator[None]:
    trace("open first")
    resources["greeting"] = "hello"
    token = _OPEN.set(True)
    try:
        yield
    finally:
        if MODE == "fail_start_slow_close":
            # Closing until the test says go (after its stop signal): a stop during the cleanup
            # that follows a failed start.
            trace("closing first")
            go = Path(os.environ["BOTRIX_TEST_LIFESPAN_TRACE"] + ".go")
            while not go.exists():  # noqa: ASYNC110 (set by another process: no event to await)
                await asyncio.sleep(0.02)
        trace("close first")
        _OPEN.reset(token)


@lifespan
async def second(resources: dict[str, Any]) -> AsyncIterator[None]:
    if MODE in ("fail_start", "fail_start_slow_close"):
        raise RuntimeError("the database refused us")
    if MODE == "exit_start":
        raise SystemExit(3)
    if MODE == "cancel_start":
        raise asyncio.CancelledError
    if MODE == "hang_start":
        trace("waiting second")
        await asyncio.Event().wait()
    if MODE == "lose":
        # A task group held across the yield whose task fails once a job ran: the lifespans
        # end while the worker runs.
        async with asyncio.TaskGroup() as group:
            group.create_task(_break_after_a_job())
            trace("open second")
            resources["name"] = "world"
            yield
            trace("close second")
        return
    trace("open second")
    resources["name"] = "world"
    yield
    trace("close second")
    if MODE == "fail_close":
        raise RuntimeError("the pool would not close")


_A_JOB_RAN = asyncio.Event()


async def _break_after_a_job() -> None:
    await _A_JOB_RAN.wait()
    raise RuntimeError("the connection broke")


@handler("t.resources")
async def greet(ctx: JobContext, payload: dict[str, Any]) -> str:
    _A_JOB_RAN.set()
    return f"{ctx.resources['greeting']} {ctx.resources['name']}"


@handler("t.resources_slow")
async def greet_slowly(ctx: JobContext, payload: dict[str, Any]) -> str:
    trace("job started")
    await asyncio.sleep(float(payload["s"]))
    trace("job done")
    return f"{ctx.resources['greeting']} {ctx.resources['name']}"
