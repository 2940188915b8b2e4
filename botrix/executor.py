"""Run one attempt of a handler and turn what happened into an outcome.

No Redis here: the executor only knows the handler, the payload and the time limit.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import traceback
from collections.abc import Coroutine, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from botrix.aio import Deadline
from botrix.context import HandlerFunc, JobContext
from botrix.errors import NonRetryableError, RetryLater
from botrix.model import MAX_DELAY_S, ErrorInfo

#: Tracebacks are cut to their last part: the frames nearest the error are the useful ones.
TRACEBACK_LIMIT = 4000
MESSAGE_LIMIT = 1000


T = TypeVar("T")

#: True in a job's task, and so in every task its handler starts (a task copies its creator's
#: context). botrix itself starts no task there.
_IN_HANDLER: contextvars.ContextVar[bool] = contextvars.ContextVar("botrix_in_handler", default=False)


def handler_context() -> contextvars.Context:
    """A copy of the current context, marked as a handler's: a copy of it for each job's task."""
    context = contextvars.copy_context()
    context.run(_IN_HANDLER.set, True)
    return context


class TaskExit(Exception):
    """A task a handler started raised SystemExit or KeyboardInterrupt: its job fails with this."""


def contain_handler_tasks(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any] | Generator[Any, None, Any], **kwargs: Any
) -> asyncio.Task[Any]:
    """The worker loop's task factory: a task a handler starts cannot end the worker.

    asyncio lets SystemExit and KeyboardInterrupt out of any task and out of the loop: a
    handler's ``sys.exit()`` inside ``gather`` or ``create_task`` ended the process at once,
    with exit 0 and no drain, its other jobs left leased. In the handler's own task, the
    attempt catches them (:func:`run_attempt`); in the tasks it starts they become TaskExit,
    which fails the job like any other error. botrix's own tasks are made as before.
    """
    if _IN_HANDLER.get() and not isinstance(coro, Generator):
        coro = _Contained(coro)
    return asyncio.Task(coro, loop=loop, **kwargs)


class _Contained(Coroutine[Any, Any, T]):
    """``coro``, with SystemExit and KeyboardInterrupt out of it turned into TaskExit.

    A class rather than a coroutine that awaits ``coro``: a task cancelled before its first
    step throws into its coroutine before it ran, and the wrapped one would then be left
    never awaited (a RuntimeWarning on stderr); here the throw reaches it, as without us.
    """

    __slots__ = ("_coro",)

    def __init__(self, coro: Coroutine[Any, Any, T]) -> None:
        self._coro = coro

    def send(self, value: Any) -> Any:
        try:
            return self._coro.send(value)
        except (SystemExit, KeyboardInterrupt) as exc:
            raise _task_exit(exc) from exc

    def throw(self, *args: Any) -> Any:
        try:
            return self._coro.throw(*args)
        except (SystemExit, KeyboardInterrupt) as exc:
            raise _task_exit(exc) from exc

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, None, T]:
        return self._coro.__await__()  # (awaited directly, not as a task: unwrapped)


def _task_exit(exc: BaseException) -> TaskExit:
    return TaskExit(f"a task the handler started raised {type(exc).__name__}({exc})")


@dataclass(slots=True)  # not frozen, as model.Job: one is made for every job
class Attempt:
    """What one run produced: a serialised result, or an error and whether to retry."""

    result: bytes | None = None
    error: ErrorInfo | None = None
    retryable: bool = True
    #: Seconds until the retry, as the handler asked (RetryLater); None: the backoff's.
    retry_after: float | None = None


def error_info(exc: BaseException) -> ErrorInfo:
    """Describe an exception for the job record, the traceback cut to a sane size."""
    tb = "".join(traceback.format_exception(exc))
    if len(tb) > TRACEBACK_LIMIT:
        tb = "...\n" + tb[-TRACEBACK_LIMIT:]
    return ErrorInfo(type(exc).__name__, _utf8(_message(exc)[:MESSAGE_LIMIT]), _utf8(tb))


def _message(exc: BaseException) -> str:
    # A handler's exception class may have a broken __str__: failing here would dead-letter
    # the job as botrix's own error, its retries lost. The traceback module says the same.
    try:
        return str(exc)
    except Exception:
        return "<exception str() failed>"


def _utf8(text: str) -> str:
    # A message may carry bytes that were never text (a file name from os.fsdecode, as lone
    # surrogates): JSON cannot hold them, and the job would be dead-lettered as a failure of
    # botrix's own instead of retried. Shown as \udcff escapes.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


async def run_attempt(
    handler: HandlerFunc, ctx: JobContext, payload: object, timeout: float, max_result_bytes: int
) -> Attempt:
    """Run the handler under ``timeout``; cancellation from outside propagates.

    The limit is a :class:`~botrix.aio.Deadline`, which tells its own cancellation apart from
    one that came from outside (shutdown, lost lease). A result over ``max_result_bytes`` is
    not stored: a failure that no retry would change.
    """
    deadline = Deadline(timeout)
    try:
        value = await handler(ctx, payload)
    except asyncio.CancelledError as exc:
        if deadline.fired():
            return Attempt(error=ErrorInfo("JobTimeout", f"attempt exceeded its {timeout:g}s timeout"))
        if deadline.task.cancelling() == 0:
            # Nobody cancelled this task: the handler raised CancelledError itself (awaiting
            # something that was cancelled). That is a failed attempt, not a shutdown, or the
            # job would be given its attempt back and redelivered forever.
            return Attempt(error=error_info(exc))
        raise
    except NonRetryableError as exc:
        return Attempt(error=error_info(exc), retryable=False)
    except RetryLater as exc:
        return Attempt(error=error_info(exc), retry_after=min(exc.delay, MAX_DELAY_S))
    except Exception as exc:
        return Attempt(error=error_info(exc))
    except BaseException as exc:  # SystemExit and friends from a handler: a failed attempt, not a crash
        return Attempt(error=error_info(exc))
    finally:
        deadline.cancel()
    try:
        result = orjson.dumps(value)
    except TypeError as exc:
        message = f"handler returned a value that is not JSON-serialisable: {exc}"
        return Attempt(error=ErrorInfo("ResultNotSerializable", message), retryable=False)
    if len(result) > max_result_bytes:
        # Written back with the job's settlement, it would make the lane's every call too big
        # for Redis (proto-max-bulk-len) or for the socket timeout, and that call is sent again
        # until it succeeds: the lane's other results, and its claims, would wait for good.
        message = (
            f"handler returned a result of {len(result)} bytes, over the {max_result_bytes} byte limit "
            "(--max-result-bytes); store large results elsewhere and return a reference"
        )
        return Attempt(error=ErrorInfo("ResultTooLarge", message), retryable=False)
    return Attempt(result=result)


_rng = random.Random()


def backoff_ms(attempt: int, base_s: float, cap_s: float, rng: random.Random = _rng) -> int:
    """Exponential backoff with full jitter: uniform over [0, min(cap, base * 2**(attempt-1))]."""
    ceiling = min(cap_s, base_s * 2 ** min(attempt - 1, 60))
    return int(rng.uniform(0, ceiling) * 1000)
