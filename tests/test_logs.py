"""The JSON log lines: a job's outcome line, written without structlog's chain, is the same
line structlog writes (botrix.logs.fast_info)."""

from __future__ import annotations

import subprocess
import sys

import orjson

from tests.conftest import ROOT

# Both paths, one after the other, in a process of its own (configure() is process-wide).
SCRIPT = """
import sys
from botrix import logs
logs.configure(sys.argv[1], sys.argv[2], sys.stdout.buffer)
log = logs.get_logger(worker_id="w-1")
fields = dict(queue="q", job_id="j-1", type="t", attempt=2, correlation_id=None,
              queue_wait_ms=12, duration_ms=0.013, note="caf\\u00e9 \\udcff")
log.info("job.succeeded", **fields)
logs.fast_info(log)("job.succeeded", **fields)
log.warning("job.failed", **fields)
"""


def _lines(level: str, fmt: str) -> list[bytes]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, level, fmt], capture_output=True, cwd=ROOT, timeout=60, check=True
    )
    return done.stdout.splitlines()


def test_the_fast_line_is_the_line_structlog_writes() -> None:
    slow, fast, warning = (orjson.loads(line) for line in _lines("info", "json"))
    assert list(fast) == list(slow) == [
        "worker_id", "queue", "job_id", "type", "attempt", "correlation_id",
        "queue_wait_ms", "duration_ms", "note", "event", "level", "timestamp",
    ]  # fmt: skip
    assert fast.pop("timestamp") != "" and slow.pop("timestamp") != ""
    assert fast == slow
    assert fast["note"] == "café \\udcff"  # text JSON cannot hold is escaped, not an error
    assert warning["level"] == "warning"


def test_the_fast_line_follows_the_level_and_the_format() -> None:
    assert [orjson.loads(line)["event"] for line in _lines("warning", "json")] == ["job.failed"]
    console = _lines("info", "console")
    assert len(console) == 3 and all(b"job." in line and not line.startswith(b"{") for line in console)
