"""Where things are: the repository, the bench folder, the job modules and the virtualenvs."""

from __future__ import annotations

from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
REPO = BENCH.parent
JOBS = BENCH / "jobs"
RESULTS = BENCH / "results"
RAW = RESULTS / "raw"
DOC = REPO / "docs" / "performance.md"
#: The peers' virtualenv, made by ``mk/bench.mk`` from ``bench/requirements-peers.txt``.
PEERS_VENV = BENCH / ".peers"
#: The project's virtualenv (botrix and the bare loop run there), overridable with --venv.
PROJECT_VENV = REPO / ".venv"
