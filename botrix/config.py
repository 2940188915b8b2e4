"""Worker settings: every option, its flag, its environment variables, default and check.

The option table below is the single source: the CLI builds ``--help`` and argument parsing
from it, and ``docs/configuration.md`` documents it. Values are validated here so a bad flag or
environment value becomes one clear :class:`ConfigError` line.
"""

from __future__ import annotations

import re
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from botrix.errors import ConfigError
from botrix.model import MAX_RETRIES, QUEUE_NAME
from botrix.redis_url import (
    REDIS_PARTS,
    check_host,
    check_redis_url,
    cluster_nodes,
    redact_url,
    redis_url_from_parts,
)

# A bad value is shown through redact_url: a URL put in the wrong variable (REDIS_HOST, the
# log level) still holds its password, and the message goes to a terminal or a journal.


def _int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            if not text.strip().isascii():  # int() takes any script's digits: "٣" is 3
                raise ValueError
            value = int(text)
        except ValueError:
            raise ValueError(f"must be a whole number, got {redact_url(text)!r}") from None
        if not low <= value <= high:
            raise ValueError(f"must be from {low} to {high}, got {value}")
        return value

    return parse


def _seconds(low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            if not text.strip().isascii():
                raise ValueError
            value = float(text)
        except ValueError:
            raise ValueError(f"must be a number of seconds, got {redact_url(text)!r}") from None
        if not low <= value <= high:
            raise ValueError(f"must be from {low:g} to {high:g} seconds, got {value:g}")
        return value

    return parse


def _queues(text: str) -> tuple[str, ...]:
    names = tuple(q.strip() for q in text.split(",") if q.strip())
    if not names:
        raise ValueError("must name at least one queue")
    for name in names:
        if not QUEUE_NAME.fullmatch(name):
            raise ValueError(f"queue name {redact_url(name)!r} must be 1-100 of A-Z a-z 0-9 _ . : -")
    if len(set(names)) != len(names):
        raise ValueError("names a queue twice")
    return names


def _token(text: str) -> str:
    # The message never repeats the value: it is a secret, and this line goes to a terminal.
    if not re.fullmatch(r"[\x21-\x7e]{16,200}", text):
        raise ValueError("must be 16-200 printable ASCII characters, no spaces (value not shown)")
    return text


def _tracing(text: str) -> str:
    value = _choice("off", "otel")(text)
    if value == "otel":
        try:  # what botrix/tracing.py will need, checked now: a bad setting stops the start
            from opentelemetry.trace.propagation import tracecontext  # noqa: F401
        except ImportError:
            raise ValueError("needs opentelemetry-api: pip install 'botrix[otel]'") from None
    return value


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.lower()
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}, got {redact_url(text)!r}")
        return value

    return parse


#: The levels of the original deployments' loggers (pino, winston) that Python names otherwise.
_LEVEL_ALIASES = {"trace": "debug", "warn": "warning", "fatal": "error", "critical": "error"}
_log_choice = _choice("debug", "info", "warning", "error", *_LEVEL_ALIASES)


def _log_level(text: str) -> str:
    value = _log_choice(text.strip())
    return _LEVEL_ALIASES.get(value, value)


def _switch(text: str) -> bool:
    """on/off, also as true/false, yes/no, 1/0 (the original daemon's REDIS_CLUSTER_ENABLED=true)."""
    value = text.strip().lower()
    if value in ("on", "true", "yes", "1"):
        return True
    if value in ("off", "false", "no", "0", ""):
        return False
    raise ValueError(f"must be on or off, got {redact_url(text)!r}")


def _apps(text: str) -> tuple[str, ...]:
    modules = tuple(m.strip() for m in text.split(",") if m.strip())
    for module in modules:
        if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", module):
            raise ValueError(f"{redact_url(module)!r} is not a Python module name")
    return modules


def _worker_id(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.@:-]{1,100}", text):
        raise ValueError("must be 1-100 of A-Z a-z 0-9 _ . @ : -")
    return text


def default_worker_id() -> str:
    """A unique id from the host name and a random suffix: restarts never collide."""
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class Option:
    """One setting: its flag, environment variables (first found wins), default and parser."""

    name: str
    envs: tuple[str, ...]
    default: str | None
    parse: Callable[[str], Any]
    help: str
    repeatable: bool = False
    metavar: str = "VALUE"

    @property
    def flag(self) -> str:
        """The command-line flag."""
        return "--" + self.name.replace("_", "-")


def _opt(
    name: str,
    default: str | None,
    parse: Callable[[str], Any],
    help_: str,
    *aliases: str,
    **kw: Any,
) -> Option:
    return Option(name, (f"BOTRIX_{name.upper()}", *aliases), default, parse, help_, **kw)


OPTIONS: tuple[Option, ...] = (
    _opt(
        "redis_url",
        "redis://localhost:6379/0",
        check_redis_url,
        "Redis URL (redis://, rediss:// for TLS, user and password allowed)",
        "REDIS_URL",
        metavar="URL",
    ),
    _opt(
        "redis_cluster",
        "off",
        _switch,
        "on: the Redis URL names a node of a Redis Cluster (the others are found from it)",
        "REDIS_CLUSTER_ENABLED",
        metavar="MODE",
    ),
    _opt(
        "redis_cluster_nodes",
        None,
        cluster_nodes,
        "more nodes of the Redis Cluster to connect through, should the URL's be down at start",
        "REDIS_CLUSTER_NODES",
        metavar="HOST:PORT,...",
    ),
    _opt(
        "worker_id",
        None,
        _worker_id,
        "unique worker id (default: host name + random suffix)",
        "WORKER_ID",
        metavar="ID",
    ),
    _opt("queues", "default", _queues, "queues to serve, highest priority first", metavar="Q,Q"),
    _opt(
        "concurrency",
        "5",
        _int(1, 10_000),
        "jobs run at once",
        "CONCURRENCY",
        "WORKER_CONCURRENCY",
        metavar="N",
    ),
    _opt(
        "app",
        None,
        _apps,
        "module registering handlers (repeatable, or comma-separated)",
        repeatable=True,
        metavar="MODULE",
    ),
    _opt(
        "max_retries",
        "3",
        _int(0, MAX_RETRIES),
        "retries after the first attempt",
        "MAX_RETRIES",
        metavar="N",
    ),
    _opt(
        "job_timeout",
        "300",
        _seconds(0.001, 86_400 * 7),
        "default per-attempt timeout",
        metavar="S",
    ),
    _opt(
        "retry_backoff",
        "1",
        _seconds(0, 86_400),
        "base of the exponential retry backoff",
        metavar="S",
    ),
    _opt("retry_backoff_max", "300", _seconds(0, 86_400 * 7), "cap of the retry backoff", metavar="S"),
    _opt(
        "lease_seconds",
        "30",
        _seconds(1, 3600),
        "lease on a running job; a dead worker's jobs come back after it",
        metavar="S",
    ),
    _opt(
        "shutdown_timeout",
        "25",
        _seconds(0, 3600),
        "time in-flight jobs get to finish after SIGTERM",
        metavar="S",
    ),
    _opt(
        "health_check_interval",
        "30",
        _seconds(0.1, 3600),
        "how often the worker's health record is refreshed",
        "HEALTH_CHECK_INTERVAL",
        metavar="S",
    ),
    _opt(
        "result_ttl",
        "86400",
        _int(1, 86_400 * 365),
        "seconds a finished job's record is kept",
        metavar="S",
    ),
    _opt(
        "dead_letter_max",
        "10000",
        _int(1, 10_000_000),
        "dead jobs kept per queue (oldest go)",
        "REMOVE_ON_FAIL",
        metavar="N",
    ),
    _opt(
        "max_payload_bytes",
        "1048576",
        _int(64, 512 * 1024 * 1024),
        "largest envelope accepted",
        metavar="BYTES",
    ),
    _opt(
        "max_result_bytes",
        "16777216",
        _int(64, 512 * 1024 * 1024),
        "largest result stored (a larger one: the job is dead, ResultTooLarge)",
        metavar="BYTES",
    ),
    _opt("http_host", "0.0.0.0", check_host, "address of the probe and metrics server", metavar="HOST"),
    _opt(
        "http_port",
        "8080",
        _int(-1, 65_535),
        "port of the probe and metrics server (0: any free port, -1: no server)",
        "HEALTH_CHECK_PORT",
        "WORKER_HEALTH_PORT",
        metavar="PORT",
    ),
    _opt(
        "log_level",
        "info",
        _log_level,
        "log level",
        "LOG_LEVEL",
        metavar="LEVEL",
    ),
    _opt(
        "log_format",
        "auto",
        _choice("auto", "json", "console"),
        "json lines, console, or auto (console on a TTY)",
        metavar="FORMAT",
    ),
    _opt(
        "tracing",
        "off",
        _tracing,
        "otel: an OpenTelemetry span per attempt, continuing the producer's trace",
        metavar="MODE",
    ),
    _opt(
        "admin_token",
        None,
        _token,
        "bearer token of the HTTP admin API (/queues, /jobs, /workers); unset: the API is off",
        metavar="TOKEN",
    ),
)


@dataclass(frozen=True, slots=True)
class Settings:
    """The worker's validated settings."""

    redis_url: str = "redis://localhost:6379/0"
    redis_cluster: bool = False
    #: Startup nodes besides the URL's (same credentials and TLS); only with ``redis_cluster``.
    redis_cluster_nodes: tuple[tuple[str, int], ...] = ()
    worker_id: str = field(default_factory=default_worker_id)
    queues: tuple[str, ...] = ("default",)
    concurrency: int = 5
    app: tuple[str, ...] = ()
    max_retries: int = 3
    job_timeout: float = 300.0
    retry_backoff: float = 1.0
    retry_backoff_max: float = 300.0
    lease_seconds: float = 30.0
    shutdown_timeout: float = 25.0
    health_check_interval: float = 30.0
    result_ttl: int = 86_400
    dead_letter_max: int = 10_000
    max_payload_bytes: int = 1_048_576
    #: Not the envelope's limit: results of a few MB were stored before there was one; the
    #: bound is for those that would make their lane's calls fail (docs/design.md).
    max_result_bytes: int = 16_777_216
    http_host: str = "0.0.0.0"
    http_port: int = 8080
    live_max_lag: float = 5.0
    log_level: str = "info"
    log_format: str = "auto"
    tracing: str = "off"
    #: The HTTP admin API's bearer token; None turns the API off. Never shown (repr, logs).
    admin_token: str | None = field(default=None, repr=False)

    @property
    def lease_ms(self) -> int:
        """The lease length in milliseconds, as the scripts take it."""
        return int(self.lease_seconds * 1000)


def resolve(flags: Mapping[str, Any], env: Mapping[str, str]) -> Settings:
    """Settings from parsed flags (raw strings, None when absent), then env, then defaults."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for option in OPTIONS:
        raw = flags.get(option.name)
        source = option.flag
        if raw is None:
            source, raw = from_env(option, env)
        if raw is None and option.name == "redis_url":
            source, raw = "/".join(REDIS_PARTS), redis_url_from_parts(env)
        if raw is None:
            raw = option.default
            source = f"default of {option.flag}"
        if raw is None:
            continue
        sources[option.name] = source
        items = raw if isinstance(raw, list) else [raw]
        try:
            parsed = [option.parse(item) for item in items]
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        if option.repeatable:
            values[option.name] = tuple(v for group in parsed for v in group)
        else:
            values[option.name] = parsed[-1]
    nodes = values.get("redis_cluster_nodes", ())
    check_cluster_nodes(values.get("redis_cluster", False), nodes, sources.get("redis_cluster_nodes", ""))
    settings = Settings(**values)
    if settings.admin_token is not None and settings.http_port == -1:
        raise ConfigError(
            f"{sources['admin_token']}: turns on the HTTP admin API, which needs the HTTP server "
            f"({sources['http_port']} is -1: no server)"
        )
    return settings


def check_cluster_nodes(cluster: bool, nodes: tuple[tuple[str, int], ...], source: str) -> None:
    """Cluster nodes without cluster mode are a mistake to report, not to ignore."""
    if nodes and not cluster:
        raise ConfigError(f"{source}: needs --redis-cluster on (the nodes of a Redis Cluster)")


def from_env(option: Option, env: Mapping[str, str]) -> tuple[str, str | None]:
    """The first of ``option``'s environment variables that is set and not empty, and its value."""
    return next(((e, env[e]) for e in option.envs if env.get(e)), ("", None))
