"""What an adapter tells the harness about one system (standard library only).

An adapter module defines ``ADAPTER`` (how to start the worker) and ``open_sender`` (how a
producer enqueues). The producer side runs inside the system's own virtualenv, so adapter
modules import their system's library only inside ``open_sender``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

#: The job kinds every system registers: no-op, sleep(s) and latency(t).
Kind = Literal["noop", "sleep", "lat"]


@dataclass(frozen=True)
class WorkerContext:
    """What a worker command needs to know about its run."""

    redis_url: str
    concurrency: int
    project_bin: Path
    peers_bin: Path
    bench: Path


@dataclass(frozen=True)
class Adapter:
    """One system under test."""

    #: Short name used on the command line and in file names.
    name: str
    #: Which virtualenv runs its worker and producer.
    venv: Literal["project", "peers"]
    #: The distribution whose version the report prints (None: report the Python stack).
    package: str | None
    #: The worker command for one run.
    command: Callable[[WorkerContext], list[str]]
    #: "async" (one event loop), "threads" (a thread pool) or "single" (one job at a time).
    model: Literal["async", "threads", "single"]
    #: The concurrency the system uses when it is not told one (threads: its default pool).
    natural_concurrency: int | None = None
    #: Settings that differ from the system's documented defaults, for the README and report.
    notes: tuple[str, ...] = field(default_factory=tuple)
    #: (kind, key) of the pending list / active zset, checked empty after a drain (the system's
    #: own record that every job was settled, not only run); empty: not checked.
    backlog_keys: tuple[tuple[Literal["list", "zset"], str], ...] = ()

    def io_concurrency(self, async_concurrency: int) -> int:
        """Concurrency in the I/O-bound scenario: the given one for async systems, else natural."""
        if self.model == "async":
            return async_concurrency
        assert self.natural_concurrency is not None
        return self.natural_concurrency

    def effective_concurrency(self, wanted: int) -> int:
        """The concurrency a run really gets (RQ's SimpleWorker runs one job at a time)."""
        return 1 if self.model == "single" else wanted


class Sender(Protocol):
    """A producer connected to one system."""

    async def send(self, kind: Kind, kwargs: dict[str, Any]) -> None:
        """Enqueue one job now."""

    async def send_many(self, kind: Kind, kwargs: dict[str, Any], n: int) -> None:
        """Enqueue ``n`` identical jobs as fast as the system's own client allows."""

    async def close(self) -> None:
        """Release connections."""
