"""`make soak`: 100,000 jobs through one worker; worker RSS and Redis memory must stay flat.

Starts its own redis-server and one botrix-worker (defaults, except a short --result-ttl so
finished records expire within the run, and a small dead-letter cap), feeds jobs at a steady
pace (2% of them fail into the dead letters), and samples the worker's RSS and Redis's
`used_memory` as it goes. Prints a markdown table and a verdict; exits 1 if memory grew
after warm-up by more than the allowed margin.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis.asyncio as aredis
from localredis import start_redis

from botrix.client import Client

ROOT = Path(__file__).resolve().parent.parent


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _drained(client: Client) -> bool:
    depth = await client.depth("default")
    return depth["pending"] == depth["active"] == 0


async def soak(total: int, result_ttl: int) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="botrix-soak-"))
    redis_proc, url = start_redis(workdir, appendonly=False)
    worker = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("botrix-worker")),
            "--redis-url",
            url,
            "--app",
            "tests.handlers",
            "--concurrency",
            "10",
            "--result-ttl",
            str(result_ttl),
            "--dead-letter-max",
            "500",
            "--max-retries",
            "0",
            "--http-port",
            "0",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stderr=subprocess.DEVNULL,
    )
    samples: list[tuple[int, float, float, int, int]] = []
    started = time.monotonic()
    try:
        async with Client.from_url(url) as client, aredis.Redis.from_url(url) as r:
            sent = 0
            step = total // 20
            while sent < total:
                batch = min(1000, total - sent)
                for i in range(batch):
                    job_type = "t.fail" if (sent + i) % 50 == 0 else "t.echo"
                    await client.enqueue(job_type, {"n": sent + i})
                sent += batch
                depth = await client.depth("default")
                while depth["pending"] > 2000:  # keep a bounded backlog: a steady pace, not one burst
                    await asyncio.sleep(0.05)
                    depth = await client.depth("default")
                if sent % step == 0:
                    used = int((await r.info("memory"))["used_memory"])
                    samples.append(
                        (sent, rss_mb(worker.pid), used / 1024 / 1024, depth["dead"], await r.dbsize())
                    )
            while not await _drained(client):
                await asyncio.sleep(0.1)
            elapsed = time.monotonic() - started
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
        redis_proc.terminate()
        redis_proc.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)

    print("| jobs enqueued | worker RSS (MB) | Redis used_memory (MB) | dead set | Redis keys |")
    print("|---:|---:|---:|---:|---:|")
    for sent, rss, used, dead, keys in samples:
        print(f"| {sent:,} | {rss:.1f} | {used:.1f} | {dead} | {keys:,} |")
    # Finished records live for --result-ttl, so Redis holds about rate x TTL of them once the
    # run is past its first TTL; lazy expiry makes it wobble. Flat means the last quarter of the
    # run peaks no higher than the middle half did (10% + 1 MB of slack), and the worker's RSS
    # moved by less than 2 MB after the first quarter.
    quarter = len(samples) // 4
    middle, last = samples[quarter : 3 * quarter], samples[3 * quarter :]
    rss_growth = max(s[1] for s in last) - samples[quarter][1]
    redis_middle, redis_last = max(s[2] for s in middle), max(s[2] for s in last)
    print(
        f"\n{total:,} jobs in {elapsed:.0f} s ({total / elapsed:,.0f} jobs/s, producer on the same machine)."
    )
    print(
        f"Worker RSS after the first quarter: {rss_growth:+.1f} MB. Redis used_memory peak: middle half "
        f"{redis_middle:.1f} MB, last quarter {redis_last:.1f} MB. Dead set capped at {last[-1][3]}."
    )
    flat = rss_growth < 2 and redis_last <= redis_middle * 1.1 + 1
    print("verdict:", "flat" if flat else "GROWING")
    return 0 if flat else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--result-ttl", type=int, default=10)
    args = parser.parse_args()
    sys.exit(asyncio.run(soak(args.jobs, args.result_ttl)))


if __name__ == "__main__":
    main()
