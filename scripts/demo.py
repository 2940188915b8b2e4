"""`make run`: a real botrix worker on a throwaway local Redis, with example jobs flowing.

Starts redis-server on a free port in a temp dir (unless REDIS_URL is set), starts
botrix-worker with the example handlers, enqueues one job that succeeds, one that fails twice
then succeeds, a slow one with progress and one that is rejected into the dead letters, shows
each finish, then keeps a trickle of jobs flowing until Ctrl-C, which stops everything it
started. `--once` exits after the first round (the tests use it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from localredis import start_redis

from botrix.client import Client


def say(text: str) -> None:
    print(f"\033[1m[demo]\033[0m {text}", flush=True)


async def first_round(url: str) -> None:
    async with Client.from_url(url) as client:
        jobs = {
            "hello (succeeds)": await client.enqueue("example.hello", {"name": "botrix"}),
            "flaky (fails twice, then succeeds)": await client.enqueue("example.flaky", {"fail_times": 2}),
            "slow (3 s, reports progress)": await client.enqueue("example.slow", {"seconds": 3}),
            "reject (bad payload, dead-lettered)": await client.enqueue("example.reject", {"oops": True}),
        }
        say(f"enqueued {len(jobs)} jobs; waiting for them")
        for label, job_id in jobs.items():
            info = await client.wait(job_id, timeout=120)
            outcome = info.result if info.status == "completed" else (info.error or {}).get("message")
            say(f"{label}: {info.status} after {info.attempts} attempt(s) -> {outcome}")
        say(f"queue depth: {await client.depth('default')}")


async def trickle(url: str, stop: asyncio.Event) -> None:
    async with Client.from_url(url) as client:
        n = 0
        while not stop.is_set():
            n += 1
            await client.enqueue("example.hello", {"name": f"visitor {n}"})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 5)


async def main(once: bool) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="botrix-demo-"))
    redis_proc = None
    url = os.environ.get("REDIS_URL")
    if not url:
        redis_proc, url = start_redis(workdir, appendonly=True)
        say(f"throwaway Redis at {url} (data in {workdir})")
    worker_bin = Path(sys.executable).with_name("botrix-worker")
    worker = subprocess.Popen(
        [
            str(worker_bin),
            "--redis-url",
            url,
            "--app",
            "botrix.examples",
            "--concurrency",
            "5",
            "--retry-backoff",
            "0.5",
            "--http-port",
            "0",
            "--worker-id",
            "demo-worker",
        ],
        # Ctrl-C reaches the demo alone, which then sends the worker one SIGTERM (a graceful
        # drain); the terminal's SIGINT as well would make that second signal a forced stop.
        start_new_session=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await first_round(url)
        if not once:
            say("jobs keep flowing every 5 s; Ctrl-C stops the worker and Redis")
            await trickle(url, stop)
    finally:
        say("stopping the worker (graceful drain)")
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=60)
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
        say(f"worker exited with {code}; everything stopped")
    return code


if __name__ == "__main__":
    sys.exit(asyncio.run(main("--once" in sys.argv[1:])))
