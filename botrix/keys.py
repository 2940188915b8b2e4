"""Every Redis key and channel name botrix uses, and nothing else spells one.

Per-queue keys carry the queue name as a hash tag (``botrix:{<queue>}:...``) so that every key a
single Lua script touches lives in one Redis Cluster slot; queues spread across shards.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

PREFIX = "botrix"

#: Set of every queue name a worker or producer has used; lets admin tools find job records.
QUEUES = f"{PREFIX}:queues"
#: Sorted set of worker ids scored by the expiry (ms) of their health record.
WORKERS = f"{PREFIX}:workers"
#: The original Botrix daemon's one job list. botrix never takes jobs from it (they are in
#: that daemon's format, for its one handler); its workers only say when producers still push
#: there, where no job would ever run.
LEGACY_QUEUE = f"{PREFIX}:jobs:queue"


def worker_health(worker_id: str) -> str:
    """The worker's health record (JSON string with a TTL), as in the original daemon."""
    return f"{PREFIX}:worker:health:{worker_id}"


@dataclass(frozen=True, slots=True)
class QueueKeys:
    """The keys of one queue; all share the ``{queue}`` hash tag."""

    queue: str
    pending: str
    active: str
    scheduled: str
    dead: str
    seq: str
    events: str
    #: Set (to "1") while an operator has paused the queue: workers claim nothing from it.
    paused: str
    #: Hash (botrix limit): ``max`` claims per ``per_ms``, across all workers, and ``used``, the
    #: claims in the window as the last call that read it left it; they are logged in
    #: ``rate_log`` (_rate.lua).
    rate: str
    #: List of "<ms> <count>" entries, the claims of each thousandth of the window, oldest first.
    rate_log: str
    #: Hash: a periodic handler's job type -> the last slot (ms) enqueued for it (schedule.lua).
    schedules: str
    job_prefix: str

    def job(self, job_id: str) -> str:
        """The hash holding one job's envelope and state."""
        return self.job_prefix + job_id

    def claims(self, instance: str, lane: int) -> str:
        """What one worker process's lane claimed last ("<id> <delivery>,..."; a lease's TTL).

        Read only after a claim whose reply was lost, to find the jobs it leased (orphans.lua).
        Per process (``instance``), not per worker id: two processes given one id by mistake
        must not take each other's jobs for orphans.
        """
        return f"{PREFIX}:{{{self.queue}}}:claims:{instance}:{lane}"

    def claims_fence(self, instance: str, lane: int) -> str:
        """The lowest call number of that lane still allowed to claim (a day's TTL).

        Set when the lane asks what a lost claim leased (orphans.lua): a claiming call of that
        lane whose request reaches Redis only afterwards (held in a stalled network, then
        resent by the kernel of a connection the worker has closed) claims nothing.
        """
        return f"{PREFIX}:{{{self.queue}}}:claims:{instance}:{lane}:fence"


@functools.lru_cache(maxsize=1024)
def queue_keys(queue: str) -> QueueKeys:
    """The key set of ``queue``; cached, as every call of the worker's hot path asks for it."""
    base = f"{PREFIX}:{{{queue}}}"
    return QueueKeys(
        queue=queue,
        pending=f"{base}:pending",
        active=f"{base}:active",
        scheduled=f"{base}:scheduled",
        dead=f"{base}:dead",
        seq=f"{base}:seq",
        events=f"{base}:events",
        paused=f"{base}:paused",
        rate=f"{base}:rate",
        rate_log=f"{base}:rate:log",
        schedules=f"{base}:schedules",
        job_prefix=f"{base}:job:",
    )
