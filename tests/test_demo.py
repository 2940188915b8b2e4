"""`make run`'s script, end to end: its own Redis, a real worker, the example jobs finishing."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT


def test_demo_runs_the_example_jobs_to_completion() -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--once"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, result.stdout + result.stderr
    assert "hello (succeeds): completed after 1 attempt(s)" in out
    assert "flaky (fails twice, then succeeds): completed after 3 attempt(s)" in out
    assert "slow (3 s, reports progress): completed after 1 attempt(s)" in out
    assert "reject (bad payload, dead-lettered): dead after 1 attempt(s)" in out
    assert "worker exited with 0" in out
