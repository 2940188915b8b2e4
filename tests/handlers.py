"""Handlers the tests run, loaded with ``--app tests.handlers`` like any user module.

Handlers that count their runs write to Redis (the URL travels in the payload), so a test can
see how many times each job id really ran, even across killed worker processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import os
import time
from typing import Any

import redis.asyncio as aredis
from prometheus_client import Counter

from botrix import InvalidPayloadError, JobContext, RetryLater, handler

# Worker processes started by the tests keep one counting client (they have one event loop);
# in the pytest process each test has its own loop, so a client is opened per call there.
_SHARED: dict[str, aredis.Redis] = {}
_IN_WORKER_PROCESS = os.environ.get("BOTRIX_TEST_WORKER_PROCESS") == "1"


async def _count(ctx: JobContext, payload: dict[str, Any]) -> None:
    if "count_url" not in payload:
        return
    url = payload["count_url"]
    if _IN_WORKER_PROCESS:
        client = _SHARED.setdefault(url, aredis.Redis.from_url(url, driver_info=None, protocol=2))
        await client.hincrby(payload["count_key"], ctx.job_id, 1)
        return
    async with aredis.Redis.from_url(url, driver_info=None, protocol=2) as r:
        await r.hincrby(payload["count_key"], ctx.job_id, 1)


@handler("t.echo")
async def echo(ctx: JobContext, payload: Any) -> Any:
    return {"echo": payload, "attempt": ctx.attempt}


@handler("t.follow_up")
async def follow_up(ctx: JobContext, payload: dict[str, Any]) -> str:
    """Queues a ``t.count`` follow-up (once per job with ``once``); ``fail_first`` fails attempt 1 after."""
    once = bool(payload.get("once"))
    child = await ctx.enqueue(
        "t.count", payload["child"], job_id=f"{ctx.job_id}-next" if once else None, once=once
    )
    if payload.get("fail_first") and ctx.attempt == 1:
        raise RuntimeError("failed after queueing its follow-up")
    return child


@handler("t.gc_thresholds")
async def gc_thresholds(ctx: JobContext, payload: Any) -> list[int]:
    """The cyclic collector's thresholds in force in the worker process."""
    return list(gc.get_threshold())


@handler("t.count")
async def count(ctx: JobContext, payload: dict[str, Any]) -> int:
    await _count(ctx, payload)
    if payload.get("sleep"):
        await asyncio.sleep(float(payload["sleep"]))
    return int(payload.get("n", 0))


@handler("t.work")
async def work(ctx: JobContext, payload: dict[str, Any]) -> int:
    """Counts its run, then sleeps a duration given in milliseconds (0 for a no-op)."""
    await _count(ctx, payload)
    await asyncio.sleep(int(payload.get("ms", 0)) / 1000)
    return ctx.attempt


@handler("t.sleep")
async def sleep(ctx: JobContext, payload: dict[str, Any]) -> str:
    await _count(ctx, payload)
    await asyncio.sleep(float(payload["seconds"]))
    return "slept"


@handler("t.fail")
async def fail(ctx: JobContext, payload: Any) -> None:
    raise RuntimeError(f"boom on attempt {ctx.attempt}")


@handler("t.fail_as")
async def fail_as(ctx: JobContext, payload: dict[str, Any]) -> None:
    raise type(payload["error"], (Exception,), {})("an error of a class made for this attempt")


@handler("t.flaky")
async def flaky(ctx: JobContext, payload: dict[str, Any]) -> int:
    if ctx.attempt <= int(payload["fail_times"]):
        raise ConnectionError(f"flaky attempt {ctx.attempt}")
    return ctx.attempt


@handler("t.rate_limited")
async def rate_limited(ctx: JobContext, payload: dict[str, Any]) -> int:
    """An upstream answers 429 with a Retry-After on the first attempts."""
    if ctx.attempt <= int(payload.get("limited_times", 1)):
        raise RetryLater(float(payload["retry_after"]), "upstream said 429, Retry-After")
    return ctx.attempt


@handler("t.reject")
async def reject(ctx: JobContext, payload: Any) -> None:
    raise InvalidPayloadError("payload is missing 'email'")


@handler("t.items")
async def items(ctx: JobContext, payload: dict[str, Any]) -> dict[str, int]:
    done = 0
    for _ in range(int(payload["items"])):
        await asyncio.sleep(0)
        done += 1
        await ctx.progress({"done": done, "of": payload["items"]})
    return {"processed": done}


@handler("t.progress_when")
async def progress_when(ctx: JobContext, payload: dict[str, Any]) -> str:
    """Reports progress once the file ``payload["path"]`` exists: the test decides when."""
    while not os.path.exists(payload["path"]):  # noqa: ASYNC110 (another process makes it)
        await asyncio.sleep(0.02)
    await ctx.progress({"stage": "upload"})
    return "done"


#: An application's own metric, on prometheus_client's default registry, as handlers make them.
REPORTS_BUILT = Counter("app_reports_built", "Reports a handler built.", ["kind"])


@handler("t.report")
async def report(ctx: JobContext, payload: dict[str, Any]) -> None:
    REPORTS_BUILT.labels(payload["kind"]).inc()


@handler("t.block")
async def block(ctx: JobContext, payload: dict[str, Any]) -> str:
    await _count(ctx, payload)
    time.sleep(float(payload["seconds"]))  # the point: a handler that blocks the loop
    return "blocked"


@handler("t.thread")
async def in_thread(ctx: JobContext, payload: dict[str, Any]) -> str:
    await asyncio.to_thread(time.sleep, float(payload["seconds"]))  # a thread cannot be cancelled
    return "slept"


@handler("t.long_cleanup")
async def long_cleanup(ctx: JobContext, payload: dict[str, Any]) -> str:
    """Cleans up for a long time once cancelled (closing a connection, flushing a buffer)."""
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        await asyncio.sleep(float(payload["cleanup"]))
        raise
    return "slept"


@handler("t.cancel_to_error")
async def cancel_to_error(ctx: JobContext, payload: Any) -> str:
    """Turns its cancellation into an error of its own, as drivers and failing cleanups do."""
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        raise RuntimeError("upload aborted") from None
    return "slept"


@handler("t.ignores_cancel")
async def ignores_cancel(ctx: JobContext, payload: Any) -> str:
    """Swallows every cancellation: asyncio cannot stop it."""
    while True:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(1)


@handler("t.logs")
async def logs(ctx: JobContext, payload: Any) -> str:
    """Writes a line of its own and returns the attempt's trace id."""
    ctx.log.info("handled")
    return ctx.trace_id


@handler("t.undecodable")
async def undecodable(ctx: JobContext, payload: Any) -> None:
    """Logs and fails with text holding bytes that were never text (os.fsdecode of a file name)."""
    name = os.fsdecode(b"report-\xff.csv")
    ctx.log.info("reading", file=name, parts={1: name}, size=2**70)
    cycle: list[Any] = []
    cycle.append(cycle)
    ctx.log.info("cyclic", value=cycle)
    raise ValueError(f"cannot read {name}")


@handler("t.exit")
async def exit_process(ctx: JobContext, payload: dict[str, Any]) -> None:
    await _count(ctx, payload)
    os._exit(17)


@handler("t.timeout", timeout=0.2)
async def too_slow(ctx: JobContext, payload: Any) -> None:
    await asyncio.sleep(30)


@handler("t.unserializable")
async def unserializable(ctx: JobContext, payload: Any) -> object:
    return object()


#: A context variable a handler sets, as tracing, logging and error-reporting libraries do.
_SET_BY_A_JOB: contextvars.ContextVar[str] = contextvars.ContextVar(
    "botrix_test_set_by_a_job", default="clean"
)


@handler("t.context")
async def context_seen(ctx: JobContext, payload: Any) -> str:
    """Returns the variable as the job found it, then sets it and awaits (a job that ends later)."""
    seen = _SET_BY_A_JOB.get()
    _SET_BY_A_JOB.set(f"set by {ctx.job_id}")
    await asyncio.sleep(0.01)
    return seen


@handler("t.switch")
async def switch(ctx: JobContext, payload: dict[str, Any]) -> str:
    """Fails until the key named in the payload exists: lets a test fix the cause, then redrive."""
    async with aredis.Redis.from_url(payload["url"], driver_info=None, protocol=2) as r:
        if await r.get(payload["key"]) is None:
            raise RuntimeError("switch is off")
    return "on"


@handler("t.block_once")
async def block_once(ctx: JobContext, payload: dict[str, Any]) -> int:
    """Blocks the event loop on the first attempt only (a hung worker), then runs normally."""
    await _count(ctx, payload)
    if ctx.attempt == 1:
        time.sleep(float(payload["seconds"]))  # the point: a blocked loop
    return ctx.attempt


@handler("t.gated_fail")
async def gated_fail(ctx: JobContext, payload: dict[str, Any]) -> int:
    """On its first attempt, waits for the file ``payload["gate"]`` to exist, then fails."""
    if ctx.attempt > 1:
        return ctx.attempt
    while not os.path.exists(payload["gate"]):  # noqa: ASYNC110 (another process makes it)
        await asyncio.sleep(0.01)
    raise ConnectionError("the upstream went away")


@handler("t.self_cancel")
async def self_cancel(ctx: JobContext, payload: Any) -> None:
    """Raises CancelledError itself (awaits a future someone cancelled): a failed attempt."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.cancel()
    await future


@handler("t.sys_exit")
async def sys_exit(ctx: JobContext, payload: Any) -> None:
    raise SystemExit(3)


@handler("t.exit_no_retry", max_retries=0)
async def exit_no_retry(ctx: JobContext, payload: dict[str, Any]) -> None:
    """A non-idempotent handler (max_retries=0) whose process dies: recovery must not rerun it."""
    await _count(ctx, payload)
    os._exit(17)


@handler("t.ignore")
async def ignore(ctx: JobContext, payload: Any) -> str:
    """Accepts any payload and returns a constant (a deep payload cannot be echoed back)."""
    return "ok"


class _Unprintable(Exception):
    """An exception whose __str__ itself fails (it never called Exception.__init__'s args)."""

    def __str__(self) -> str:
        return self.detail  # type: ignore[attr-defined, no-any-return]  # the bug being modelled


@handler("t.unprintable")
async def unprintable(ctx: JobContext, payload: Any) -> int:
    """Fails with an exception that cannot be printed until its last attempt, then succeeds."""
    if ctx.attempt <= ctx.max_retries:
        raise _Unprintable
    return ctx.attempt


@handler("t.big_result")
async def big_result(ctx: JobContext, payload: dict[str, Any]) -> str:
    """Returns a string of ``payload["bytes"]`` characters."""
    return "x" * int(payload["bytes"])


async def _exits(how: str) -> None:
    await asyncio.sleep(0)
    raise SystemExit(0) if how == "exit" else KeyboardInterrupt


@handler("t.exit_in_task")
async def exit_in_task(ctx: JobContext, payload: dict[str, Any]) -> str:
    """A task the handler starts calls ``sys.exit()`` (or meets a KeyboardInterrupt); on the
    job's last attempt it does not, and the handler returns."""
    if ctx.attempt <= ctx.max_retries:
        await asyncio.gather(_exits(payload["how"]))
    return "survived"


@handler("t.cancel_a_task")
async def cancel_a_task(ctx: JobContext, payload: Any) -> str:
    """Starts a task and cancels it before its first step (a TaskGroup aborting does that)."""
    task = asyncio.get_running_loop().create_task(asyncio.sleep(1))
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return "cancelled"
