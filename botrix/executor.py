"""Run one attempt of a handler and turn what happened into an outcome.

No Redis here: the executor only knows the handler, the payload and the time limit.
"""

from __future__ import annotations

import asyncio
import random
import traceback
from dataclasses import dataclass

import orjson

from botrix.aio import Deadline
from botrix.context import HandlerFunc, JobContext
from botrix.errors import NonRetryableError, RetryLater
from botrix.model import MAX_DELAY_S, ErrorInfo

#: Tracebacks are cut to their last part: the frames nearest the error are the useful ones.
TRACEBACK_LIMIT = 4000
MESSAGE_LIMIT = 1000


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
    return ErrorInfo(type(exc).__name__, _utf8(str(exc)[:MESSAGE_LIMIT]), _utf8(tb))


def _utf8(text: str) -> str:
    # A message may carry bytes that were never text (a file name from os.fsdecode, as lone
    # surrogates): JSON cannot hold them, and the job would be dead-lettered as a failure of
    # botrix's own instead of retried. Shown as \udcff escapes.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


async def run_attempt(handler: HandlerFunc, ctx: JobContext, payload: object, timeout: float) -> Attempt:
    """Run the handler under ``timeout``; cancellation from outside propagates.

    The limit is a :class:`~botrix.aio.Deadline`, which tells its own cancellation apart from
    one that came from outside (shutdown, lost lease).
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
        return Attempt(result=orjson.dumps(value))
    except TypeError as exc:
        message = f"handler returned a value that is not JSON-serialisable: {exc}"
        return Attempt(error=ErrorInfo("ResultNotSerializable", message), retryable=False)


_rng = random.Random()


def backoff_ms(attempt: int, base_s: float, cap_s: float, rng: random.Random = _rng) -> int:
    """Exponential backoff with full jitter: uniform over [0, min(cap, base * 2**(attempt-1))]."""
    ceiling = min(cap_s, base_s * 2 ** min(attempt - 1, 60))
    return int(rng.uniform(0, ceiling) * 1000)
