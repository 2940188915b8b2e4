"""The one place that configures structlog.

JSON lines when stderr is not a terminal (what log shippers read), a readable console when it
is. Job lines carry worker_id, queue, job_id, type, attempt and correlation_id.

Logging is on the hot path (a line a job at INFO), so three things are cheaper than
structlog's defaults: the timestamp formats the date once a second; lines written during one
event-loop iteration go out in a single write at its end instead of one flushed write each (a
``kill -9`` can therefore lose the lines of the iteration it interrupts, never more); and a
job's outcome line is rendered without structlog's processor chain (:func:`fast_info`).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

import orjson
import structlog
from structlog.typing import EventDict, WrappedLogger

Logger = Any
"""A structlog bound logger (structlog's own type is not precise enough to be useful)."""


class LineWriter:
    """A structlog logger that batches lines per event-loop iteration into one write."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._lines: list[bytes] = []
        self._lock = threading.Lock()
        self._scheduled = False
        atexit.register(self.flush)

    def msg(self, message: bytes | str) -> None:
        """Queue one line; it is written when the current loop iteration ends."""
        line = message.encode("utf-8", "backslashreplace") if isinstance(message, str) else message
        with self._lock:
            self._lines.append(line)
            if self._scheduled:
                return
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None:
                loop.call_soon(self.flush)
                self._scheduled = True
                return
        self.flush()  # no loop in this thread: write at once

    log = debug = info = warn = warning = error = critical = exception = fatal = msg

    def flush(self) -> None:
        """Write every queued line."""
        with self._lock:
            lines, self._lines, self._scheduled = self._lines, [], False
        if lines:
            try:
                self._stream.write(b"\n".join(lines) + b"\n")
                self._stream.flush()
            except (OSError, ValueError):
                pass  # a closed or broken stream must not take the worker down


class _Timestamp:
    """ISO-8601 UTC timestamps with microseconds; the date part is formatted once a second."""

    def __init__(self) -> None:
        # One tuple, replaced whole: a handler thread logging at the turn of a second must not
        # pair the new second with the old date.
        self._cached = (-1, "")

    def __call__(self, logger: WrappedLogger, name: str, event: EventDict) -> EventDict:
        now = time.time()
        second = int(now)
        cached_second, prefix = self._cached
        if second != cached_second:
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._cached = (second, prefix)
        event["timestamp"] = f"{prefix}.{int((now - second) * 1_000_000):06d}Z"
        return event


def _dumps(obj: Any, default: Any = None) -> bytes:
    try:
        return orjson.dumps(obj, default=default or str)
    except TypeError:
        # Lone surrogates (bytes that were never text, via os.fsdecode) in some value: a log
        # call must not raise into the handler that made it. Rare, so the slow path is fine.
        try:
            return orjson.dumps(_escaped(obj), default=default or str)
        except Exception as exc:  # nested too deep, a cycle, a __str__ that raises: the line's
            # identity still goes out, with what went wrong, rather than an error in the caller
            kept = {k: obj[k] for k in _IDENTITY if isinstance(obj.get(k), str)}
            kept["log_error"] = f"{type(exc).__name__}: the values of this line cannot be written as JSON"
            return orjson.dumps(_escaped(kept))


#: What a log line that cannot be rendered still says.
_IDENTITY = ("worker_id", "queue", "job_id", "type", "event", "level", "timestamp")


def _escaped(value: Any) -> Any:
    # Text orjson refuses becomes text it takes, and so do keys that are not strings and
    # integers past 64 bits, which the fast path refuses as well.
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_escaped(str(k)): _escaped(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_escaped(v) for v in value]
    if (
        value is None
        or isinstance(value, float | bool)
        or (isinstance(value, int) and -(2**63) <= value < 2**64)
    ):
        return value
    return _escaped(str(value))


@dataclass(slots=True)
class _Setup:
    """What :func:`configure` set up that :func:`fast_info` needs.

    In JSON mode, structlog's chain (the processors list), its timestamper and renderer, and
    the line writer; in console mode, nothing. In both, the bound logger class, whose level
    is fixed (:func:`enabled_for`).
    """

    processors: list[Any] | None = None
    stamp: _Timestamp | None = None
    render: Any = None
    writer: LineWriter | None = None
    wrapper: type[Any] | None = None


_setup = _Setup()


def fast_info(log: Logger) -> Callable[[str, dict[str, Any]], None]:
    """``log.info``, or in JSON mode a function that writes the very same line for less.

    For the worker's hottest line, a job's outcome. structlog's path (copy the context, four
    processors in a loop) cost 5.8 us a line, this one 2.3: about 6% of the worker's CPU for
    no-op jobs (docs/performance.md). It runs the same timestamper and renderer on a dict
    built in structlog's key order (the bound context, the fields, event, level), so the two
    paths write the same bytes (tests/test_logs.py); there is no exception formatting here. It
    calls ``log.info`` in console mode, with INFO filtered out, or for a logger made under
    another configuration (an application that called ``structlog.configure`` itself).

    The fields come as one dict, not as keyword arguments: a caller spreading its dict into
    keywords made a copy of it per line (2% of a no-op job's instructions).
    """
    processors, stamp, render, writer = _setup.processors, _setup.stamp, _setup.render, _setup.writer
    if (
        processors is None
        or stamp is None
        or writer is None
        or not log.is_enabled_for(logging.INFO)
        or log._processors is not processors  # structlog's documented attributes for wrappers
        or log._logger is not writer
    ):
        return lambda event, fields: log.info(event, **fields)
    context = structlog.get_context(log)

    def info(event: str, fields: dict[str, Any]) -> None:
        line = {**context, **fields, "event": event, "level": "info"}
        writer.msg(render(writer, "info", stamp(writer, "info", line)))

    return info


def enabled_for(log: Logger, level: int) -> bool:
    """Whether ``log`` writes at ``level``, for a hot path that asks once and remembers.

    Sound for loggers of botrix's configuration, whose level is fixed when it is made. Any
    other logger (an application that set up structlog itself, on the standard library's
    levels, say) may change its level later, so the answer is True.
    """
    wrapper = _setup.wrapper
    return wrapper is None or not isinstance(log, wrapper) or bool(log.is_enabled_for(level))


def configure(level: str = "info", fmt: str = "auto", stream: BinaryIO | None = None) -> None:
    """Set up structlog for the process: level filter, timestamps, renderer."""
    out = stream or sys.stderr.buffer
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=out.isatty())
        if use_console
        else structlog.processors.JSONRenderer(serializer=_dumps)
    )
    writer = LineWriter(out)
    stamp = _Timestamp()
    processors = [structlog.processors.add_log_level, stamp, structlog.processors.format_exc_info, renderer]
    _setup.processors, _setup.stamp, _setup.render, _setup.writer = (
        (None, None, None, None) if use_console else (processors, stamp, renderer, writer)
    )
    _setup.wrapper = structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()])
    structlog.configure(
        processors=processors,
        wrapper_class=_setup.wrapper,
        logger_factory=lambda *args: writer,
        cache_logger_on_first_use=True,
    )


def get_logger(**initial: Any) -> Logger:
    """A logger bound to ``initial`` values."""
    return structlog.get_logger().bind(**initial)
