"""Exceptions that cross module boundaries.

Handlers raise :class:`NonRetryableError` (or a subclass) to send a job straight to the dead
letters; everything else a handler raises is a failed attempt that may be retried.
"""

from __future__ import annotations


class BotrixError(Exception):
    """Base class for every error botrix raises on purpose."""


class ConfigError(BotrixError):
    """A flag or environment value is invalid; the CLI prints it as one line, exit code 2."""


class NonRetryableError(BotrixError):
    """Raised by a handler when retrying cannot help (bad payload, permanent refusal)."""


class InvalidPayloadError(NonRetryableError):
    """The payload does not have the shape the handler needs."""


class EnvelopeError(BotrixError):
    """A job envelope on a queue is malformed; the job is dead-lettered with this reason."""


class PayloadTooLargeError(BotrixError):
    """An enqueue was refused because the envelope exceeds the configured size limit."""


class JobNotFoundError(BotrixError):
    """No record exists for the job id (never enqueued, or expired after its TTL)."""


class HandlerLoadError(BotrixError):
    """A handler module named with ``--app`` could not be imported or registers nothing."""
