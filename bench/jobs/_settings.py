"""Settings the harness passes to every system's job module through the environment."""

from __future__ import annotations

import os

#: The throwaway Redis of this run.
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
#: The worker concurrency of this run (each module maps it onto its system's own setting).
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "10"))
#: The queue every system serves (its own default where it has one).
QUEUE = "default"
