"""``botrix-worker``'s entry point: a stop asked for while the worker starts is kept, not lost.

Importing the worker (the Redis client, the metrics, uvloop, structlog) and then the handler
modules is most of a start-up, a few hundred milliseconds or, for handler modules that connect
to things at import, much longer. SIGTERM's default action meanwhile would end the process by
the signal (exit 143, nothing logged) and SIGINT's would print a KeyboardInterrupt traceback.
So this module imports nothing heavy: it notes the signals first, then imports the worker,
which starts, holds nothing, and stops with exit 0. The packages above it, ``botrix`` and
``botrix.cli``, import nothing when loaded, so the window left is the interpreter's own start
(~15 ms here).
"""

from __future__ import annotations

import signal
from collections.abc import Sequence


class EarlyStop:
    """SIGTERM and SIGINT before the event loop runs: remembered, and honoured once it does."""

    def __init__(self) -> None:
        self.reason: str | None = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._note)

    def _note(self, signum: int, frame: object) -> None:
        self.reason = signal.Signals(signum).name


def worker(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``botrix-worker`` (and of ``botrix worker``)."""
    early = EarlyStop()
    from botrix.cli.worker import main  # here, after the signals are noted: on purpose

    main(argv, early)
