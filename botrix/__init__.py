"""botrix: an asyncio job worker for Redis that never loses a job.

Producers use :class:`Client`; handler modules use :func:`handler` (and :func:`lifespan` for what
handlers share) and receive a :class:`JobContext`.
"""

from __future__ import annotations

__version__ = "0.1.0"

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
    # The client pulls in redis; handler modules that only register handlers do not need it.
    if name == "Client":
        from botrix.client import Client

        return Client
    raise AttributeError(name)
