# mypy: allow-untyped-decorators
"""A handler module whose import takes a while, as one that connects to something at import."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from botrix import JobContext, handler

_MARKER = os.environ.get("BOTRIX_TEST_IMPORT_MARKER")
if _MARKER:
    Path(_MARKER).write_text("importing")
    time.sleep(2)  # long enough for the test to send its signal mid-import


@handler("t.slow_import")
async def noop(ctx: JobContext, payload: Any) -> None:
    return None
