"""Handlers by name: the only way a job's ``type`` reaches code.

A job names a handler, never a Python path: the worker imports exactly the modules given with
``--app`` and runs only what they registered.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from botrix.context import HandlerFunc
from botrix.errors import HandlerLoadError
from botrix.model import MAX_DELAY_S, validate_job_id, validate_queue_name

F = TypeVar("F", bound=HandlerFunc)


@dataclass(frozen=True, slots=True)
class Handler:
    """A registered handler and its per-handler settings (None: the worker's default)."""

    name: str
    func: HandlerFunc
    timeout: float | None = None
    max_retries: int | None = None
    #: A periodic handler runs every ``every`` seconds, enqueued to ``queue`` (scheduler.py).
    every: float | None = None
    queue: str = "default"


class Registry:
    """Handlers by job type."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def add(
        self,
        name: str,
        func: HandlerFunc,
        *,
        timeout: float | None = None,
        max_retries: int | None = None,
        every: float | None = None,
        queue: str | None = None,
    ) -> None:
        """Register ``func`` for jobs of type ``name``.

        With ``every`` (seconds, from 1), the workers also enqueue a run of it into ``queue``
        (default "default") once per period, together once, not once per worker.
        """
        existing = self._handlers.get(name)
        if existing is not None and existing.func is not func:
            raise HandlerLoadError(f"two handlers registered for job type {name!r}")
        if every is not None:
            if not 1 <= every <= MAX_DELAY_S:  # also refuses NaN
                raise ValueError(f"every= must be from 1 to {MAX_DELAY_S} seconds, got {every!r}")
            # The runs' ids are every:<type>:<slot ms>: the type must fit in a job id.
            validate_job_id(f"every:{name}:{10**13}")
        elif queue is not None:
            raise ValueError("queue= names where a periodic handler's runs go: it needs every=")
        validate_queue_name(queue or "default")
        self._handlers[name] = Handler(name, func, timeout, max_retries, every, queue or "default")

    def get(self, name: str) -> Handler | None:
        """The handler for a job type, or None."""
        return self._handlers.get(name)

    def max_retries_by_type(self) -> dict[str, int]:
        """The handlers that set their own ``max_retries`` (recovery honours them too)."""
        return {n: h.max_retries for n, h in self._handlers.items() if h.max_retries is not None}

    def periodic(self) -> list[Handler]:
        """The handlers registered with ``every=``."""
        return [h for h in self._handlers.values() if h.every is not None]

    def names(self) -> list[str]:
        """Registered job types, sorted."""
        return sorted(self._handlers)

    def handler(
        self,
        name: str,
        *,
        timeout: float | None = None,
        max_retries: int | None = None,
        every: float | None = None,
        queue: str | None = None,
    ) -> Callable[[F], F]:
        """Register an ``async def (ctx, payload)`` as the handler of job type ``name``.

        Decorator form of :meth:`add`: ``every=300`` also runs it every 300 s, enqueued into
        ``queue``.
        """

        def register(func: F) -> F:
            self.add(name, func, timeout=timeout, max_retries=max_retries, every=every, queue=queue)
            return func

        return register


#: The registry ``@handler`` writes to and the worker reads from.
default_registry = Registry()


#: ``@handler("type", timeout=..., max_retries=..., every=..., queue=...)``: registers an
#: ``async def (ctx, payload)`` in the default registry (Registry.handler, Registry.add).
handler = default_registry.handler


def load_apps(modules: Iterable[str], registry: Registry = default_registry) -> Registry:
    """Import the ``--app`` modules; fail clearly if one is missing or nothing registers."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise HandlerLoadError(f"cannot import handler module {module!r}: {exc}") from None
    if not registry.names():
        raise HandlerLoadError("no handlers registered: pass --app MODULE (or BOTRIX_APP)")
    return registry
