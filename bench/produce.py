"""Enqueue jobs into one system with its own client; run with that system's Python.

    python bench/produce.py SYSTEM URL bulk  --kind noop  --n 10000
    python bench/produce.py SYSTEM URL paced --kind lat   --n 500 --rate 100

``bulk`` enqueues ``n`` identical jobs as fast as the client allows (the pre-queue of the drain,
I/O and memory scenarios). ``paced`` sends one job at a time at ``rate`` per second; a ``lat`` job
carries ``t``, the producer's ``time.time()`` taken just before its enqueue call. Prints one JSON
line: how many jobs and how long it took.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "jobs"))
sys.path.insert(0, str(HERE))

#: The sleep each I/O-bound job does, seconds.
SLEEP_S = 0.05


def kwargs_for(kind: str) -> dict[str, Any]:
    """The arguments of a job of ``kind`` (``lat`` gets its time at send)."""
    return {"s": SLEEP_S} if kind == "sleep" else {}


async def bulk(system: str, url: str, kind: str, n: int) -> None:
    """Enqueue ``n`` jobs with the adapter's fastest documented client call."""
    sender = await importlib.import_module(f"harness.adapters.{system}").open_sender(url)
    try:
        await sender.send_many(kind, kwargs_for(kind), n)
    finally:
        await sender.close()


async def paced(system: str, url: str, kind: str, n: int, rate: float) -> None:
    """Enqueue ``n`` jobs one at a time, the i-th at ``start + i / rate``."""
    sender = await importlib.import_module(f"harness.adapters.{system}").open_sender(url)
    try:
        start = time.monotonic()
        for i in range(n):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            args = {"t": time.time()} if kind == "lat" else kwargs_for(kind)
            await sender.send(kind, args)
    finally:
        await sender.close()


def main() -> None:
    """Parse arguments, enqueue, print a JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("system")
    parser.add_argument("url")
    parser.add_argument("mode", choices=("bulk", "paced"))
    parser.add_argument("--kind", choices=("noop", "sleep", "lat"), default="noop")
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--rate", type=float, default=100.0)
    args = parser.parse_args()
    began = time.monotonic()
    if args.mode == "bulk":
        asyncio.run(bulk(args.system, args.url, args.kind, args.n))
    else:
        asyncio.run(paced(args.system, args.url, args.kind, args.n, args.rate))
    print(json.dumps({"n": args.n, "seconds": round(time.monotonic() - began, 3)}))


if __name__ == "__main__":
    main()
