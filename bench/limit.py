"""The bare loop: the ceiling a Python worker on this Redis can reach, with the same guarantees.

It does what a reliable worker must do and nothing else:

- claim: ONE Lua call (``lua/limit_claim.lua``) moves up to *free slots* jobs from the pending list
  to the active lease zset with a deadline, writes each job's record hash and publishes a
  ``started`` event; when nothing is pending it blocks on ``BLMOVE pending pending LEFT LEFT``,
  which wakes on a push without moving anything (no poll sleep, no loss window);
- run: one asyncio task per job, never more than ``--concurrency`` at once;
- settle: finished jobs are settled in batches, ONE Lua call (``lua/limit_settle.lua``) per batch
  (status, ZREM from active, EXPIRE of the record, event), one batch in flight at a time;
- renew: the leases of running jobs are pushed forward every ``lease / 3`` seconds.

It has no retries, no recoverer, no metrics, no logging and no reconnects: a ceiling, not a
product. Run it with the project's virtualenv (uvloop, hiredis, orjson)::

    python bench/limit.py --redis-url redis://127.0.0.1:6379/0 --concurrency 10

Producers push ``{"type": "noop", "payload": {}}`` onto ``limit:{default}:pending``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import uvloop

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "jobs"))
sys.path.insert(0, str(HERE))

import probe  # noqa: E402
from limit_resp import RedisPyConnection, RespConnection, connect  # noqa: E402

Connection = RespConnection | RedisPyConnection

Handler = Callable[[dict[str, Any]], Awaitable[None]]


async def _noop(payload: dict[str, Any]) -> None:
    probe.ran()


async def _sleep(payload: dict[str, Any]) -> None:
    probe.started()
    await asyncio.sleep(payload["s"])
    probe.finished()


async def _lat(payload: dict[str, Any]) -> None:
    probe.started(payload["t"])
    probe.finished()


HANDLERS: dict[str, Handler] = {"noop": _noop, "sleep": _sleep, "lat": _lat}


def keys(queue: str) -> dict[str, str]:
    """Every key the bare loop touches; all share the ``{queue}`` hash tag."""
    base = f"limit:{{{queue}}}:"
    return {
        "pending": base + "pending",
        "active": base + "active",
        "seq": base + "seq",
        "events": base + "events",
        "job": base + "job:",
    }


class BareLoop:
    """Claims, runs, settles and renews; see the module docstring."""

    def __init__(
        self,
        conn: Connection,
        blocking: Connection,
        queue: str,
        concurrency: int,
        lease_s: float = 30.0,
        record_ttl_s: int = 3600,
    ) -> None:
        self._conn = conn
        self._blocking = blocking
        self._keys = keys(queue)
        self._concurrency = concurrency
        self._lease_ms = int(lease_s * 1000)
        self._record_ttl = record_ttl_s
        self._worker_id = f"limit-{os.getpid()}"
        self._running: dict[bytes, asyncio.Task[None]] = {}
        self._finished: list[bytes] = []
        self._slot_freed = asyncio.Event()
        self._settle_wake = asyncio.Event()
        self._claim_sha = ""
        self._settle_sha = ""

    async def load_scripts(self) -> None:
        """SCRIPT LOAD both Lua files once, at start."""
        lua = HERE / "lua"
        shas = []
        for name in ("limit_claim.lua", "limit_settle.lua"):
            sha = await self._conn.call("SCRIPT", "LOAD", (lua / name).read_text())
            shas.append(sha.decode() if isinstance(sha, bytes) else str(sha))
        self._claim_sha, self._settle_sha = shas

    async def run(self, stop: asyncio.Event) -> None:
        """Work until ``stop`` is set, then finish running jobs and settle them."""
        renew = asyncio.create_task(self._renew_loop(stop))
        settle = asyncio.create_task(self._settle_loop(stop))
        await self._claim_loop(stop)
        if self._running:
            await asyncio.wait(list(self._running.values()))
        self._settle_wake.set()
        await settle
        renew.cancel()

    def wake(self) -> None:
        """Unblock the loops waiting on slots or finished jobs (used at stop)."""
        self._slot_freed.set()
        self._settle_wake.set()

    async def _claim_loop(self, stop: asyncio.Event) -> None:
        k = self._keys
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            free = self._concurrency - len(self._running)
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            now = int(time.time() * 1000)
            reply = await self._conn.call(
                "EVALSHA", self._claim_sha, 4, k["pending"], k["active"], k["seq"], k["events"],
                free, now, now + self._lease_ms, self._worker_id, k["job"],
            )  # fmt: skip
            if not reply:
                # Wakes as soon as anything is pushed; rotating the head onto itself moves nothing.
                await self._blocking.call("BLMOVE", k["pending"], k["pending"], "LEFT", "LEFT", 1)
                continue
            for i in range(0, len(reply), 2):
                job_id = reply[i]
                self._running[job_id] = loop.create_task(self._run_job(job_id, reply[i + 1]))

    async def _run_job(self, job_id: bytes, envelope: bytes) -> None:
        status = b"completed"
        try:
            job = orjson.loads(envelope)
            await HANDLERS[job["type"]](job.get("payload") or {})
        except Exception:  # a failed job is settled as failed; the ceiling has no retries
            status = b"failed"
        finally:
            del self._running[job_id]
            self._finished += (job_id, status)
            self._slot_freed.set()
            self._settle_wake.set()

    async def _settle_loop(self, stop: asyncio.Event) -> None:
        k = self._keys
        while True:
            if not self._finished:
                if stop.is_set() and not self._running:
                    return
                self._settle_wake.clear()
                await self._settle_wake.wait()
                continue
            batch, self._finished = self._finished, []
            now = int(time.time() * 1000)
            await self._conn.call(
                "EVALSHA", self._settle_sha, 2, k["active"], k["events"],
                now, self._record_ttl, k["job"], *batch,
            )  # fmt: skip

    async def _renew_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(self._lease_ms / 3000)
            if self._running:
                deadline = int(time.time() * 1000) + self._lease_ms
                args: list[Any] = []
                for job_id in list(self._running):
                    args += (deadline, job_id)
                await self._conn.call("ZADD", self._keys["active"], "XX", *args)


async def main_async(args: argparse.Namespace) -> None:
    """Connect twice (commands, blocking wake-ups), run until SIGTERM or SIGINT."""
    conn: Connection
    blocking: Connection
    if args.client == "redis-py":
        conn, blocking = RedisPyConnection(args.redis_url), RedisPyConnection(args.redis_url)
    else:
        conn, blocking = await connect(args.redis_url), await connect(args.redis_url)
    bare = BareLoop(conn, blocking, args.queue, args.concurrency)
    await bare.load_scripts()
    stop = asyncio.Event()

    def on_signal() -> None:
        stop.set()
        bare.wake()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    await bare.run(stop)
    conn.close()
    blocking.close()


def main() -> None:
    """Parse the command line and run the loop on uvloop."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--queue", default="default")
    parser.add_argument(
        "--client",
        choices=("resp", "redis-py"),
        default="resp",
        help="resp: its own pipelining connection (the ceiling); redis-py: redis.asyncio + hiredis",
    )
    uvloop.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
