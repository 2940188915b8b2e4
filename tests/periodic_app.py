"""A periodic handler for periodic process test (``--app tests.periodic_app``).

Kept out of tests.handlers, which every test worker loads: its runs would go on in the
background of every other test.
"""

from __future__ import annotations

from typing import Any

from botrix import JobContext, handler

#: The queue its runs go to; tests/test_schedule.py spells it out too (PERIODIC_QUEUE).
QUEUE = "t-periodic"


@handler("t.every_second", every=1, queue=QUEUE)
async def every_second(ctx: JobContext, payload: dict[str, Any]) -> int:
    return int(payload["slot_ms"])
