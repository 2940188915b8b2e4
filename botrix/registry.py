"""Handlers by name: the only way a job's ``type`` reaches code.

A job names a handler, never a Python path: the worker imports exactly the modules given with
``--app`` and runs only what they registered.
"""

from __future__ import annotations

import importlib
import inspect
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from botrix.context import HandlerFunc, LifespanFunc
from botrix.errors import HandlerDeclarationError, HandlerLoadError
from botrix.model import (
    MAX_DELAY_S,
    MAX_RETRIES,
    is_retries,
    is_timeout,
    validate_job_id,
    validate_queue_name,
)

if TYPE_CHECKING:
    from botrix.cron import Cron

F = TypeVar("F", bound=HandlerFunc)
L = TypeVar("L", bound=LifespanFunc)


@dataclass(frozen=True, slots=True)
class Handler:
    """A registered handler and its per-handler settings (None: the worker's default)."""

    name: str
    func: HandlerFunc
    timeout: float | None = None
    max_retries: int | None = None
    #: A periodic handler runs every ``every`` seconds, or at the fire times of ``cron``,
    #: enqueued to ``queue`` (periodic.py).
    every: float | None = None
    queue: str = "default"
    cron: Cron | None = None


class Registry:
    """Handlers by job type, and the lifespans that open what they share."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self._lifespans: list[LifespanFunc] = []

    def add(
        self,
        name: str,
        func: HandlerFunc,
        *,
        timeout: float | None = None,
        max_retries: int | None = None,
        every: float | None = None,
        queue: str | None = None,
        cron: str | None = None,
        tz: str | None = None,
    ) -> None:
        """Register ``func`` for jobs of type ``name``.

        With ``every`` (seconds, from 1), the workers also enqueue a run of it into ``queue``
        (default "default") once per period, together once, not once per worker. With
        ``cron`` (a cron expression, evaluated in ``tz``, default UTC) they do so at each of its
        fire times instead.
        """
        existing = self._handlers.get(name)
        if existing is not None and existing.func is not func:
            raise HandlerLoadError(f"two handlers registered for job type {name!r}")
        try:
            _check_limits(timeout, max_retries)
            schedule = _schedule(name, every, queue, cron, tz)
            validate_queue_name(queue or "default")
        except (ValueError, TypeError) as exc:
            raise HandlerDeclarationError(f"handler {name!r}: {exc}") from None
        self._handlers[name] = Handler(name, func, timeout, max_retries, every, queue or "default", schedule)

    def get(self, name: str) -> Handler | None:
        """The handler for a job type, or None."""
        return self._handlers.get(name)

    def max_retries_by_type(self) -> dict[str, int]:
        """The handlers that set their own ``max_retries`` (recovery honours them too)."""
        return {n: h.max_retries for n, h in self._handlers.items() if h.max_retries is not None}

    def periodic(self) -> list[Handler]:
        """The handlers registered with ``every=`` or ``cron=``."""
        return [h for h in self._handlers.values() if h.every is not None or h.cron is not None]

    def names(self) -> list[str]:
        """Registered job types, sorted."""
        return sorted(self._handlers)

    def lifespan(self, func: L) -> L:
        """Register an async generator that opens resources before its ``yield``, closes them after.

        Each worker enters its lifespans in the order registered, before it claims a job, and
        leaves them in reverse once its last job is settled (botrix/lifespans.py). The dict it
        receives is the one every handler reads as ``ctx.resources``.
        """
        declared: object = func  # (checked as an object: the check's narrowing would lose L)
        if not inspect.isasyncgenfunction(declared):
            raise HandlerDeclarationError(
                f"lifespan {name_of(func)}: must be an async generator function (async def with one yield)"
            )
        if func not in self._lifespans:  # (the same function registered twice counts once)
            self._lifespans.append(func)
        return func

    def lifespans(self) -> list[LifespanFunc]:
        """The registered lifespans, in the order to enter them."""
        return list(self._lifespans)

    def handler(
        self,
        name: str,
        *,
        timeout: float | None = None,
        max_retries: int | None = None,
        every: float | None = None,
        queue: str | None = None,
        cron: str | None = None,
        tz: str | None = None,
    ) -> Callable[[F], F]:
        """Register an ``async def (ctx, payload)`` as the handler of job type ``name``.

        Decorator form of :meth:`add`: ``every=300`` also runs it every 300 s, and
        ``cron="0 2 * * *"`` at 2 AM (UTC, or ``tz``), enqueued into ``queue``.
        """

        def register(func: F) -> F:
            self.add(
                name,
                func,
                timeout=timeout,
                max_retries=max_retries,
                every=every,
                queue=queue,
                cron=cron,
                tz=tz,
            )
            return func

        return register


def _check_limits(timeout: float | None, max_retries: int | None) -> None:
    """A handler's timeout= and max_retries=, checked as a job's own are (model.parse_job)."""
    if timeout is not None and not is_timeout(timeout):
        raise ValueError(f"timeout= must be a positive number of seconds, got {timeout!r}")
    if max_retries is not None and not is_retries(max_retries):
        raise ValueError(f"max_retries= must be a whole number from 0 to {MAX_RETRIES}, got {max_retries!r}")


def _schedule(
    name: str, every: float | None, queue: str | None, cron: str | None, tz: str | None
) -> Cron | None:
    """Check a handler's periodic settings; its cron schedule, if it has one."""
    if not isinstance(name, str) or not name:
        raise ValueError("a handler's job type must be a non-empty string")
    if every is not None and (isinstance(every, bool) or not isinstance(every, int | float)):
        raise ValueError(f"every= must be a number of seconds, got {every!r}")
    if queue is not None and not isinstance(queue, str):
        raise ValueError(f"queue= must be a queue name, got {queue!r}")
    if every is not None and cron is not None:
        raise ValueError("a periodic handler takes every= or cron=, not both")
    if tz is not None and cron is None:
        raise ValueError("tz= is the time zone of a cron= expression: it needs cron=")
    if queue is not None and every is None and cron is None:
        raise ValueError("queue= names where a periodic handler's runs go: it needs every= or cron=")
    if every is not None and not 1 <= every <= MAX_DELAY_S:  # also refuses NaN
        raise ValueError(f"every= must be from 1 to {MAX_DELAY_S} seconds, got {every!r}")
    schedule = None
    if cron is not None:
        from botrix.cron import Cron  # cronsim and zoneinfo only for workers that use them

        schedule = Cron(cron, "UTC" if tz is None else tz)
    if every is not None or cron is not None:
        # The runs' ids are every:<type>:<slot ms> or cron:...: the type must fit in a job id.
        validate_job_id(f"every:{name}:{10**13}")
    return schedule


def name_of(func: object) -> str:
    """``module.qualname`` of a function a handler module registered, for messages."""
    module = getattr(func, "__module__", None) or "?"
    return f"{module}.{getattr(func, '__qualname__', repr(func))}"


def where(exc: BaseException, module: str) -> str:
    """``Type: message (file, line N)`` of an exception raised by ``module`` (its import, or its code).

    The line is the module's own (or its packages') that raised, not one deep in a library it
    called; else the innermost frame.
    """
    if isinstance(exc, SyntaxError):
        return f"SyntaxError: {exc.msg} ({exc.filename}, line {exc.lineno})"
    path = module.replace(".", "/")
    parents = [path.rsplit("/", n)[0] for n in range(path.count("/") + 1)]
    own = tuple(f"/{p}{end}" for p in parents for end in (".py", "/__init__.py"))
    frames = traceback.extract_tb(exc.__traceback__)
    at = ([f for f in frames if f.filename.endswith(own)] or frames)[-1:]
    place = f" ({at[0].filename}, line {at[0].lineno})" if at else ""
    try:
        text = str(exc)
    except Exception:  # an exception whose __str__ fails too
        text = "(its message could not be read)"
    if isinstance(exc, BaseExceptionGroup):  # (a task group's: the causes, not only their count)
        text += " [" + "; ".join(where(sub, module) for sub in exc.exceptions[:3]) + "]"
    return f"{type(exc).__name__}: {text}{place}"


#: The registry ``@handler`` writes to and the worker reads from.
default_registry = Registry()


#: ``@handler("type", timeout=..., max_retries=..., every=... or cron=..., queue=...)``: registers an
#: ``async def (ctx, payload)`` in the default registry (Registry.handler, Registry.add).
handler = default_registry.handler

#: ``@lifespan``: registers an async generator that opens what handlers share before its
#: ``yield`` and closes it after, in the default registry (Registry.lifespan).
lifespan = default_registry.lifespan


def load_apps(modules: Iterable[str], registry: Registry = default_registry) -> Registry:
    """Import the ``--app`` modules; fail clearly if one is missing or nothing registers."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise HandlerLoadError(f"cannot import handler module {module!r}: {exc}") from None
        except HandlerLoadError as exc:  # a refused registration: the module's own mistake
            raise HandlerLoadError(f"handler module {module!r}: {exc}") from None
        except SystemExit as exc:
            raise HandlerLoadError(
                f"handler module {module!r} called sys.exit({exc.code!r:.200}) on import"
            ) from None
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # its own code failed: where, in one line (a start that fails)
            place = " ".join(where(exc, module).split())
            raise HandlerLoadError(f"handler module {module!r} failed on import: {place:.1000}") from None
    if not registry.names():
        raise HandlerLoadError("no handlers registered: pass --app MODULE (or BOTRIX_APP)")
    return registry
