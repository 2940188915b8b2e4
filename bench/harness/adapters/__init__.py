"""One adapter per system; ``load(name)`` imports it (standard library only at import time)."""

from __future__ import annotations

import importlib

from harness.adapters.base import Adapter

#: Every system, in report order: botrix, its ceiling (own RESP connection, then redis-py), peers.
NAMES = ("botrix", "limit", "limitpy", "saq", "arq", "streaq", "dramatiq", "celery", "rq")
PEERS = ("saq", "arq", "streaq", "dramatiq", "celery", "rq")


def load(name: str) -> Adapter:
    """The ``ADAPTER`` of ``harness.adapters.<name>``."""
    if name not in NAMES:
        msg = f"unknown system {name!r}; known: {', '.join(NAMES)}"
        raise ValueError(msg)
    adapter: Adapter = importlib.import_module(f"harness.adapters.{name}").ADAPTER
    return adapter
