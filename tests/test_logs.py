"""The JSON log lines: a job's outcome line, written without structlog's processor loop, is the
same line structlog writes (botrix.logs.fast_info)."""

from __future__ import annotations

import json
import subprocess
import sys

import orjson

from tests.conftest import ROOT

# Both paths, one after the other, in a process of its own (configure() is process-wide).
SCRIPT = """
import decimal, sys
import structlog
from botrix import logs
logs.configure(sys.argv[1], sys.argv[2], sys.stdout.buffer)
if sys.argv[3] == "app":  # an application that configures structlog itself, after botrix
    structlog.configure(processors=[structlog.processors.JSONRenderer()],
                        logger_factory=structlog.PrintLoggerFactory(sys.stdout))
log = logs.get_logger(worker_id="w-1")
fields = dict(queue="q", job_id="j-1", type="t", attempt=2, correlation_id=None,
              queue_wait_ms=12, duration_ms=0.013, note="caf\\u00e9 \\udcff",
              amount=decimal.Decimal("1.5"))
log.info("job.succeeded", **fields)
logs.fast_info(log)("job.succeeded", fields)
log.warning("job.failed", **fields)
plain = dict(queue="q", amount=decimal.Decimal("1.5"))  # no text to escape: the renderer's own fallback
log.info("job.succeeded", **plain)
logs.fast_info(log)("job.succeeded", plain)
"""


def _lines(level: str, fmt: str, configured_by: str = "botrix") -> list[bytes]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, level, fmt, configured_by],
        capture_output=True,
        cwd=ROOT,
        timeout=60,
        check=True,
    )
    return done.stdout.splitlines()


def test_the_fast_line_is_the_line_structlog_writes() -> None:
    slow, fast, warning, plain_slow, plain_fast = (orjson.loads(line) for line in _lines("info", "json"))
    assert list(fast) == list(slow) == [
        "worker_id", "queue", "job_id", "type", "attempt", "correlation_id",
        "queue_wait_ms", "duration_ms", "note", "amount", "event", "level", "timestamp",
    ]  # fmt: skip
    assert fast.pop("timestamp") != "" and slow.pop("timestamp") != ""
    assert fast == slow
    assert fast["note"] == "café \\udcff"  # text JSON cannot hold is escaped, not an error
    assert isinstance(fast["amount"], str)  # another value, in a line with text to escape: text too
    assert warning["level"] == "warning"
    assert plain_fast.pop("timestamp") != "" and plain_slow.pop("timestamp") != ""
    assert plain_fast == plain_slow and plain_fast["amount"] == "Decimal('1.5')"


def test_the_fast_line_follows_the_level_the_format_and_a_later_configuration() -> None:
    assert [orjson.loads(line)["event"] for line in _lines("warning", "json")] == ["job.failed"]
    console = _lines("info", "console")
    assert len(console) == 5 and all(b"job." in line and not line.startswith(b"{") for line in console)
    # The application's own configuration applies to the outcome line too.
    lines = [json.loads(line) for line in _lines("info", "json", configured_by="app")]
    assert [e["event"] for e in lines] == ["job.succeeded"] * 2 + ["job.failed"] + ["job.succeeded"] * 2
    assert not any("level" in e or "timestamp" in e for e in lines)


# A hot path asks once whether DEBUG is on (attempt.py): true to its answer only for botrix's own
# loggers, whose level is fixed when they are made.
ENABLED = """
import logging, sys, structlog
from botrix import logs
logs.configure("info", "json", sys.stdout.buffer)
ours = logs.get_logger(worker_id="w-1")
structlog.configure(wrapper_class=structlog.stdlib.BoundLogger,
                    logger_factory=structlog.stdlib.LoggerFactory())
theirs = structlog.get_logger().bind(worker_id="w-1")
print(logs.enabled_for(ours, logging.DEBUG), logs.enabled_for(ours, logging.INFO),
      logs.enabled_for(theirs, logging.DEBUG))
"""


def test_a_level_is_taken_as_fixed_only_for_botrix_own_loggers() -> None:
    done = subprocess.run(
        [sys.executable, "-c", ENABLED], capture_output=True, cwd=ROOT, timeout=60, check=True, text=True
    )
    assert done.stdout.split() == ["False", "True", "True"]
