"""Exceptions that cross module boundaries.

Handlers raise :class:`NonRetryableError` (or a subclass) to send a job straight to the dead
letters, and :class:`RetryLater` to choose when it is retried; everything else a handler raises
is a failed attempt that may be retried after the backoff.
"""

from __future__ import annotations

import math


class BotrixError(Exception):
    """Base class for every error botrix raises on purpose."""


class ConfigError(BotrixError):
    """A flag or environment value is invalid; the CLI prints it as one line, exit code 2."""


class NonRetryableError(BotrixError):
    """Raised by a handler when retrying cannot help (bad payload, permanent refusal)."""


class InvalidPayloadError(NonRetryableError):
    """The payload does not have the shape the handler needs."""


class RetryLater(BotrixError):
    """Raised by a handler to be retried after ``delay`` seconds instead of the backoff's.

    For an upstream that says when to come back (HTTP 429 or 503 with ``Retry-After``, a
    rate limit's reset time). It is a failed attempt like any other: it counts against
    ``max_retries``, and with none left the job is dead-lettered.
    """

    def __init__(self, delay: float, message: str = "") -> None:
        if not math.isfinite(delay) or delay < 0:
            raise ValueError(f"RetryLater delay must be a finite number of seconds >= 0, got {delay!r}")
        super().__init__(message or f"retry in {delay:g}s")
        self.delay = delay


class EnvelopeError(BotrixError):
    """A job envelope on a queue is malformed; the job is dead-lettered with this reason."""


class PayloadTooLargeError(BotrixError):
    """An enqueue was refused because the envelope exceeds the configured size limit."""


class JobNotFoundError(BotrixError):
    """No record exists for the job id (never enqueued, or expired after its TTL)."""


class HandlerLoadError(BotrixError):
    """A handler module named with ``--app`` could not be imported or registers nothing."""


class LifespanError(BotrixError):
    """A lifespan (``@lifespan``) failed to open its resources: the worker claims no job and exits 1."""


class HandlerDeclarationError(HandlerLoadError, ValueError):
    """A handler's registration is refused: a bad ``every=``, ``cron=``, ``tz=`` or ``queue=``.

    The worker says so in one line, naming the module, and exits 2.
    """
