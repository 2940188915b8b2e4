"""``botrix-worker``: the daemon."""

from __future__ import annotations

import asyncio
import atexit
import gc
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import uvloop

from botrix.app import ServeError, Worker
from botrix.cli.argv import Parser, fail, hide_secrets, hide_secrets_in_title
from botrix.cli.start import EarlyStop
from botrix.config import OPTIONS, Settings, resolve
from botrix.errors import ConfigError, HandlerLoadError, LifespanError
from botrix.executor import contain_handler_tasks
from botrix.logs import configure, get_logger
from botrix.notify import SystemdNotifier
from botrix.registry import default_registry, load_apps

PROG = "botrix-worker"

T = TypeVar("T")
#: How long tasks left once the worker stopped get to end after their cancel.
TASKS_GRACE_S = 1.0
#: The cyclic collector's thresholds (Python's are 700, 10, 10). A job in flight holds a few
#: dozen objects (its task, frames, timers) for as long as it runs. At 700, a young collection
#: came every 40 jobs or so and promoted the jobs still running: with 1,000 jobs sleeping 50 ms
#: each, the collector took 290 ms of a 20,000-job drain, against 22 ms at 10,000
#: (docs/performance.md). Only cyclic garbage waits longer (reference counting frees the rest
#: at once): up to this many young containers and what they hold, and in the older generations
#: (a job that ran across a collection) ten and a hundred times as many. A handlers module that
#: makes much of it can set its own thresholds.
GC_THRESHOLDS = (10_000, 10, 10)


def build_parser() -> Parser:
    """Every option of the option table, as a flag; ``--help`` lists the env vars too."""
    parser = Parser(
        prog=PROG,
        description="Run botrix jobs from Redis. Every flag can also be set by environment.",
    )
    for option in OPTIONS:
        default = f"default {option.default}" if option.default is not None else "no default"
        parser.add_argument(
            option.flag,
            dest=option.name,
            action="append" if option.repeatable else "store",
            metavar=option.metavar,
            help=f"{option.help} [env {' or '.join(option.envs)}; {default}]",
        )
    return parser


def parse_settings(argv: Sequence[str], env: dict[str, str]) -> Settings:
    """Settings from argv and environment; bad values exit 2 with one line."""
    args = build_parser().parse_args(argv)
    try:
        settings = resolve(vars(args), env)
    except ConfigError as exc:
        fail(PROG, str(exc))
    if not settings.app:
        fail(PROG, "no handler module: pass --app MODULE (or set BOTRIX_APP)")
    return settings


class _HandlerThreads(ThreadPoolExecutor):
    """The loop's default executor (``asyncio.to_thread``): counts busy threads, never waits.

    A thread cannot be cancelled. Once the drain has requeued the job of a handler still
    running in one, waiting for it would keep the process up until the orchestrator's grace
    period ends in a SIGKILL.
    """

    def __init__(self) -> None:
        super().__init__(thread_name_prefix="botrix-thread")
        self._lock = threading.Lock()
        self.busy = 0  # submitted and not done: running, or queued (a queued one is cancelled at shutdown)

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future = super().submit(fn, *args, **kwargs)
        with self._lock:
            self.busy += 1
        future.add_done_callback(self._done)  # run at once if it is done already
        return future

    def _done(self, _: Future[Any]) -> None:
        with self._lock:
            self.busy -= 1

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        super().shutdown(wait=False, cancel_futures=True)


async def _stuck_tasks() -> int:
    """Cancel what is left once the worker stopped; returns how many tasks ignore it.

    Only a handler can ignore a cancel (its job was requeued by the drain), and asyncio would
    wait for it forever before exiting.
    """
    left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in left:
        task.cancel()
    if not left:
        return 0
    _, pending = await asyncio.wait(left, timeout=TASKS_GRACE_S)
    return len(pending)


def _exit_stopped(threads: _HandlerThreads, tasks: int, worker_id: str, failure: str | None) -> None:
    """End the process once the worker stopped, past any handler that outlived the drain.

    Python would wait for those. And the event loop is never closed: closing it gives SIGTERM
    its default action back, so a late stop signal would turn exit 0 into death by signal.
    A ``failure`` (the lifespans lost while it ran) is said in one line, and the exit code is 1.
    """
    log = get_logger(worker_id=worker_id)
    if threads.busy:
        log.warning(
            "worker.threads_abandoned",
            threads=threads.busy,
            reason="handler threads still running after the drain; their jobs are back on the queue",
        )
    if tasks:
        log.warning(
            "worker.tasks_abandoned",
            tasks=tasks,
            reason="handlers ignoring their cancellation after the drain; their jobs are back on the queue",
        )
    if failure is not None:
        sys.stderr.write(f"{PROG}: error: {hide_secrets(failure)}\n")
    _exit_now(0 if failure is None else 1)  # what was owed to Redis is written (or logged as given up)


def _ignore_stop_signals() -> None:
    """Once the worker has stopped, a stop signal has nothing left to stop.

    Straight from the loop's handler to SIG_IGN: removing the loop's handler first would
    restore the default action for a moment, and a late signal (a second Ctrl-C, a
    supervisor's follow-up) landing then turned a clean exit 0 into death by signal.
    """
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


def _exit_now(code: int) -> None:
    atexit._run_exitfuncs()  # what a normal exit runs: the log lines still buffered, among others
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: Sequence[str] | None = None, early: EarlyStop | None = None) -> None:
    """Run the worker; ``early`` holds a stop asked for while it was being imported (start.py)."""
    early = early or EarlyStop()
    hide_secrets_in_title()
    settings = parse_settings(sys.argv[1:] if argv is None else argv, dict(os.environ))
    configure(settings.log_level, settings.log_format)
    # Before the handlers' modules are imported, so that one tuning the collector keeps its say.
    gc.set_threshold(*GC_THRESHOLDS)
    # Handler modules are imported from the working directory too, as `python -m` would.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        registry = load_apps(settings.app, default_registry)
    except HandlerLoadError as exc:
        fail(PROG, str(exc))

    # Everything imported so far lives as long as the process: freezing it keeps the cyclic
    # GC from rescanning ~50 MB of modules on every full collection (pauses of several ms).
    # Collected first: garbage the imports left in a cycle would be frozen with it, for good.
    gc.collect()
    gc.freeze()

    threads = _HandlerThreads()

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(threads)
        loop.set_task_factory(contain_handler_tasks)
        worker = Worker(settings, registry, SystemdNotifier.from_environ(unset=True))
        worker.install_signal_handlers()
        if early.reason:
            worker.request_stop(early.reason)
        try:
            await worker.run()
        except Exception:
            if await _stuck_tasks():  # uvloop.run would wait for them forever, the error unseen
                traceback.print_exc()
                _exit_now(1)
            raise
        _ignore_stop_signals()
        # Here, not after uvloop.run: leaving this coroutine would make it wait for them.
        lost = worker.lifespans_lost
        failure = None if lost is None else f"the lifespans ended while the worker ran: {lost}"
        _exit_stopped(threads, await _stuck_tasks(), settings.worker_id, failure)

    try:
        uvloop.run(serve())
    except* ConfigError as group:  # a Redis URL redis-py refuses (Store checks it)
        fail(PROG, str(group.exceptions[0]))
    except* ServeError as group:
        fail(PROG, str(group.exceptions[0]), 1)
    except* LifespanError as group:  # one failed to start: no job was claimed
        fail(PROG, str(group.exceptions[0]), 1)


if __name__ == "__main__":
    main()
