"""The worker's view of itself, shared by the runner (writes), heartbeat and HTTP server (read).

Nothing here touches Redis: it is plain state, so the probes can answer from it even while
Redis is down.
"""

from __future__ import annotations

import asyncio
import os
import resource
import sys
import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from botrix.model import Claimed


class Phase(StrEnum):
    """The worker's life: starting -> running -> draining -> stopped."""

    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


#: ru_maxrss is in kilobytes on Linux, in bytes on macOS.
_MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024


def memory_usage() -> dict[str, int | None]:
    """The process's memory as /health shows it (the BullMQ worker's ``checks.memory``).

    Resident now, its peak, and the limit the cgroup sets (a container's or a systemd unit's
    MemoryMax), so "how close to the OOM killer" is one request away. Read from /proc and
    /sys: microseconds, no subprocess. The RSS and the limit are None where the system does not
    say (not Linux, no limit set).
    """
    return {
        "rss_bytes": _read_int("/proc/self/statm", field=1, scale=os.sysconf("SC_PAGE_SIZE")),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _MAXRSS_UNIT,
        "limit_bytes": _cgroup_memory_limit(),
    }


def _cgroup_memory_limit() -> int | None:
    """The lowest memory limit from the process's cgroup up to the root, None if none is set.

    Each line of /proc/self/cgroup names a hierarchy and the process's path in it. cgroup v2's
    is "0::/system.slice/botrix-worker@1.service" under systemd, "0::/" (or a child of it) in a
    container with its own cgroup namespace: its limit is ``memory.max``. cgroup v1, still on
    older hosts and Kubernetes nodes, has a line for its memory controller ("4:memory:/kubepods/
    ...") and writes the limit as ``memory.limit_in_bytes``. A limit may sit on any level above
    (a slice's MemoryMax, a pod's limit): the OOM killer applies the lowest. In a container with
    no cgroup namespace (v1), the path is the host's, and the container sees its own cgroup at
    the mount's root: the walk up reaches it there.
    """
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":
            limits += _limits_up("/sys/fs/cgroup", path, "memory.max")
        elif "memory" in controllers.split(","):
            limits += _limits_up("/sys/fs/cgroup/memory", path, "memory.limit_in_bytes")
    return min((limit for limit in limits if limit < _V1_UNLIMITED), default=None)


#: cgroup v1 says "no limit" with the largest page-aligned byte count it holds (about 2**63).
_V1_UNLIMITED = 1 << 62


def _limits_up(mount: str, path: str, name: str) -> list[int]:
    parts = [p for p in path.strip().split("/") if p]
    limits = (_read_int("/".join([mount, *parts[:depth], name])) for depth in range(len(parts), -1, -1))
    return [limit for limit in limits if limit is not None]


def _read_int(path: str, *, field: int = 0, scale: int = 1) -> int | None:
    try:
        with open(path, "rb") as f:
            return int(f.read().split()[field]) * scale
    except (OSError, ValueError, IndexError):
        return None  # not Linux, no such cgroup file, or "max": no limit


def serving(record: dict[str, Any]) -> bool:
    """Whether a worker's health record says it takes jobs: a draining worker is leaving."""
    return record.get("status") != Phase.DRAINING


@dataclass(slots=True)
class InFlight:
    """A job this worker is running now."""

    job_id: str
    queue: str
    delivery: int
    #: What the claim handed over: the attempt number and the envelope, which name the job in a
    #: requeue the drain writes.
    claimed: Claimed
    task: asyncio.Task[None] | None = None
    #: Why the task was cancelled, if it was: ``shutdown`` (requeue), ``lease_lost`` or
    #: ``cancelled`` (an operator's cancel; both drop the attempt), or ``abandoned`` (the drain
    #: requeued it).
    cancel_reason: str | None = None
    #: The runner's lane whose slot the job holds.
    lane: int = 0
    #: When Redis last handed this worker the lease (``time.monotonic()``): a renewal sent
    #: before then that found the lease gone speaks of an older grant, not this one.
    granted: float = 0.0


@dataclass(slots=True)
class Counters:
    """Totals since the worker started, as in the original daemon's health record."""

    processed: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    dead: int = 0
    recovered: int = 0
    refused_acks: int = 0


@dataclass(slots=True)
class RedisLink:
    """What the worker last learned about Redis."""

    up: bool = False
    reason: str = "not connected yet"
    last_ok_monotonic: float = 0.0
    rtt_s: float = 0.0
    version: str = ""
    in_outage: bool = False

    def mark_up(self) -> bool:
        """Record a successful round trip; True when this ends an outage."""
        ended = self.in_outage
        self.up, self.reason, self.in_outage = True, "", False
        self.last_ok_monotonic = time.monotonic()
        return ended

    def mark_down(self, reason: str) -> bool:
        """Record a failure (the reason free of secrets); True when this starts an outage."""
        started = not self.in_outage
        self.up, self.reason, self.in_outage = False, reason, True
        return started


@dataclass(slots=True)
class WorkerState:
    """Everything the worker knows about its own condition."""

    worker_id: str
    queues: tuple[str, ...]
    concurrency: int
    phase: Phase = Phase.STARTING
    in_flight: dict[tuple[str, str, int], InFlight] = field(default_factory=dict)
    counters: Counters = field(default_factory=Counters)
    redis: RedisLink = field(default_factory=RedisLink)
    started_monotonic: float = field(default_factory=time.monotonic)
    started_wall: float = field(default_factory=time.time)
    #: True while the heartbeat component runs; /live fails if it died.
    heartbeat_running: bool = False
    #: Worst event-loop lag over the recent window, and when the loop last ticked (monotonic).
    loop_lag_s: float = 0.0
    last_loop_tick: float = field(default_factory=time.monotonic)
    #: Queues whose keys something other than botrix wrote (``WRONGTYPE``), with the reason:
    #: the runner leaves them alone, serving the others, until the key is repaired.
    damaged: dict[str, str] = field(default_factory=dict)
    #: Served queues an operator has paused (botrix pause), as the last claim found them.
    paused: set[str] = field(default_factory=set)
    #: Served queues whose rate limit (botrix limit) cut the last claim short.
    limited: set[str] = field(default_factory=set)
    #: This process, among any that share its worker id by mistake (the health record says).
    instance: str = field(default_factory=lambda: uuid.uuid4().hex)

    def held(self) -> dict[str, list[tuple[str, int]]]:
        """Leases held now, by queue: what the heartbeat renews."""
        by_queue: dict[str, list[tuple[str, int]]] = {}
        for job in self.in_flight.values():
            by_queue.setdefault(job.queue, []).append((job.job_id, job.delivery))
        return by_queue

    def uptime(self) -> float:
        """Seconds since the worker started."""
        return time.monotonic() - self.started_monotonic

    def health_record(self) -> dict[str, Any]:
        """The record published in Redis (the original daemon's format, plus the queues)."""
        current = [job.job_id for job in self.in_flight.values()]
        c = self.counters
        return {
            "worker_id": self.worker_id,
            "status": str(self.phase),
            "last_heartbeat": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "current_job": current[0] if current else None,
            "current_jobs": current,
            "jobs_processed": c.processed,
            "jobs_succeeded": c.succeeded,
            "jobs_failed": c.failed,
            "uptime_seconds": int(self.uptime()),
            "queues": list(self.queues),
            "concurrency": self.concurrency,
            "instance": self.instance,
        }
