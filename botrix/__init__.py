"""botrix: an asyncio job worker for Redis that never loses a job.

Producers use :class:`Client`; handler modules use :func:`handler` (and :func:`lifespan` for what
handlers share) and receive a :class:`JobContext`.
"""

from __future__ import annotations

import importlib

# Not typing's: importing typing is most of what loading this package would cost (see below).
# Type checkers treat any TYPE_CHECKING as true.
TYPE_CHECKING = False

__version__ = "0.1.0"

# Each name is imported on first use. This package is imported before ``botrix-worker``'s entry
# point can keep a stop signal (botrix/cli/start.py): with these imports made here, a SIGTERM in
# the first ~45 ms of a start (dataclasses, orjson, the model) ended the process by the signal,
# exit 143, where it now stops with exit 0. The client's imports (redis) stay off a handler
# module's path, as before.
_EXPORTS = {
    "Client": "botrix.client",
    "InvalidPayloadError": "botrix.errors",
    "JobContext": "botrix.context",
    "JobInfo": "botrix.model",
    "JobStatus": "botrix.model",
    "NonRetryableError": "botrix.errors",
    "Registry": "botrix.registry",
    "RetryLater": "botrix.errors",
    "handler": "botrix.registry",
    "lifespan": "botrix.registry",
}

if TYPE_CHECKING:
    from botrix.client import Client
    from botrix.context import JobContext
    from botrix.errors import InvalidPayloadError, NonRetryableError, RetryLater
    from botrix.model import JobInfo, JobStatus
    from botrix.registry import Registry, handler, lifespan

__all__ = [
    "Client",
    "InvalidPayloadError",
    "JobContext",
    "JobInfo",
    "JobStatus",
    "NonRetryableError",
    "Registry",
    "RetryLater",
    "__version__",
    "handler",
    "lifespan",
]


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'botrix' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
