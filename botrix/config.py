"""Worker settings: every option, its flag, its environment variables, default and check.

The option table below is the single source: the CLI builds ``--help`` and argument parsing
from it, and ``docs/configuration.md`` documents it. Values are validated here so a bad flag or
environment value becomes one clear :class:`ConfigError` line.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import os
import re
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, parse_qs, quote, unquote, urlsplit

from botrix.errors import ConfigError
from botrix.model import MAX_RETRIES

_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")

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
        if not _QUEUE_NAME.match(name):
            raise ValueError(f"queue name {redact_url(name)!r} must be 1-100 of A-Z a-z 0-9 _ . : -")
    if len(set(names)) != len(names):
        raise ValueError("names a queue twice")
    return names


def check_redis_url(text: str) -> str:
    """``text`` if it is a Redis URL botrix can use; a ValueError that never shows a password."""
    try:
        text.encode()
    except UnicodeEncodeError:  # bytes the environment could not decode: AUTH would fail on them
        raise ValueError("is not valid UTF-8 text: percent-encode any other byte (%FF)") from None
    shown = redact_url(text)
    try:
        parts = urlsplit(text)
    except ValueError:
        raise ValueError(f"is not a URL, got {shown!r}") from None
    if parts.scheme not in ("redis", "rediss", "unix") or "://" not in text:
        raise ValueError(f"must be a redis://, rediss:// or unix:// URL, got {shown!r}")
    if _garbled(text, parts):
        raise ValueError(
            f"looks like a password with an unencoded / ? # & or @ in it: percent-encode them "
            f"(%2F %3F %23 %26 %40), got {shown!r}"
        )
    if not (parts.hostname or parts.path):
        raise ValueError(f"names no host or socket, got {shown!r}")
    try:
        # A bad port raises here rather than at the first command; port 0 is no port, and
        # redis-py would quietly connect to 6379 instead.
        if parts.port == 0:
            raise ValueError
    except ValueError:
        # Not the parser's message: it quotes the text it took for the port. With an '@' further
        # on, that text may be a password with a / ? or # in it that the checks above missed.
        if "@" in text:
            shown = f"{parts.scheme}://***"
        raise ValueError(f"has a port that is not a number from 1 to 65535, got {shown!r}") from None
    _check_numbers(parts.query)
    # redis-py reads the path as a database (without its slashes) unless ?db= gives one, and
    # ignores a path it cannot read as a number: /1x would serve database 0.
    db = unquote(parts.path).replace("/", "")
    if parts.scheme != "unix" and _query_value(parts.query, "db") is None and db and not db.isdecimal():
        raise ValueError(f"has a path that is not a database number (/0, /1, ...), got {shown!r}")
    return text


#: redis-py's numeric URL parameters and the least each may be. It takes a NaN, a zero or a
#: negative timeout, which then fail every command as if Redis were away, for good.
_URL_NUMBERS = {
    "socket_timeout": (0.001, "seconds"),
    "socket_connect_timeout": (0.001, "seconds"),
    "timeout": (0.001, "seconds"),
    "health_check_interval": (0, "seconds"),
    "db": (0, ""),
    "max_connections": (1, ""),
    "socket_read_size": (1, "bytes"),
}


def _check_numbers(query: str) -> None:
    for key, (low, unit) in _URL_NUMBERS.items():
        text = _query_value(query, key)
        if text is None:
            continue
        try:
            value = float(text) if text.strip().isascii() else math.nan
        except ValueError:
            continue  # not a number at all: redis-py's own check says so (store.check_url)
        if not (math.isfinite(value) and value >= low):
            raise ValueError(f"has {key}={text}: must be a number of at least {low:g} {unit}".rstrip())


def _host(text: str) -> str:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        try:  # what the resolver will be asked: a name it would refuse to encode is a bad value
            encoded = text.encode("idna")
        except UnicodeError:
            encoded = b""
        labels = encoded.rstrip(b".").split(b".")
        if (
            text
            and (
                not re.fullmatch(rb"[A-Za-z0-9_.-]{1,253}", encoded)  # "": every interface
                or any(label[:1] == b"-" or label[-1:] == b"-" for label in labels)
                # 999.1.1.1: no address, and no name (0 and 127.1 are addresses to the resolver)
                or (all(label.isdigit() for label in labels) and not _inet_aton(text))
            )
        ):
            raise ValueError(f"must be an IP address or a host name, got {redact_url(text)!r}") from None
    return text


def _inet_aton(text: str) -> bool:
    """Whether the resolver takes ``text`` as an IPv4 address in a short form (0, 127.1, 10.1)."""
    try:
        socket.inet_aton(text)
    except OSError:
        return False
    return True


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


def cluster_nodes(text: str) -> tuple[tuple[str, int], ...]:
    """``host:port,host:port``: more nodes to reach a Redis Cluster by, besides the URL's.

    The original daemon's REDIS_CLUSTER_NODES. An IPv6 address goes in brackets. An entry is
    never repeated with what precedes an ``@``: a URL pasted here may carry a password.
    """
    nodes = []
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        shown = re.sub(r"^.*@", "***@", item)[:100]
        host, colon, port = item.rpartition(":")
        if not colon or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{shown!r} is not host:port with a port from 1 to 65535")
        bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        version: int = 0
        with contextlib.suppress(ValueError):
            version = ipaddress.ip_address(bare).version
        # An IPv6 address goes in brackets, or its last group would pass for the port.
        try:
            if not bare or (bare != host) != (version == 6):
                raise ValueError
            _host(bare)
        except ValueError:
            raise ValueError(f"{shown!r} does not start with a host name or an IP address") from None
        nodes.append((bare, int(port)))
    return tuple(nodes)


def _apps(text: str) -> tuple[str, ...]:
    modules = tuple(m.strip() for m in text.split(",") if m.strip())
    for module in modules:
        if not re.match(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$", module):
            raise ValueError(f"{redact_url(module)!r} is not a Python module name")
    return modules


def _worker_id(text: str) -> str:
    if not re.match(r"^[A-Za-z0-9_.@:-]{1,100}$", text):
        raise ValueError("must be 1-100 of A-Z a-z 0-9 _ . @ : -")
    return text


def default_worker_id() -> str:
    """A unique id from the host name and a random suffix: restarts never collide."""
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


def _garbled(url: str, parts: SplitResult) -> bool:
    """Whether a password may have spilled out of its place, so that the parser misreads it.

    An unencoded / ? or # in the userinfo ends the host part early: an '@' then follows in the
    path, a query key or the fragment. An unencoded & or # in a ``password=`` query value cuts
    it short: a bare key (no '=') or a fragment follows. Redis URLs use neither fragments nor
    bare keys, nor an '@' in those places, so treating them all as a spilt password costs
    nothing.
    """
    after = url.partition("://")[2][len(parts.netloc) :]
    path = after.partition("?")[0].partition("#")[0]
    items = [item for item in parts.query.split("&") if item]
    return (
        "@" in path or "#" in url or any("=" not in item or "@" in item.partition("=")[0] for item in items)
    )


def redact_url(url: str) -> str:
    """The URL with any password (in the userinfo or a ``*password=`` parameter) as ``***``.

    A user part with no password is hidden too: redis-cli reads ``redis://secret@host`` as a
    password, and people paste such URLs.

    A URL whose password may have spilled out of its place (see ``_garbled``) is shown as
    ``scheme://***``, and text that is not a ``scheme://`` URL but holds an '@' as ``***``:
    never a secret, at the price of everything else. Past a ``*password=`` parameter the query
    is hidden too: an unencoded & in the password would show its end as another parameter.
    """
    try:
        if "://" not in url:
            return "***" if "@" in url else url  # not a URL (a typo of one may hold a password)
        parts = urlsplit(url)
        if _garbled(url, parts):
            return f"{parts.scheme}://***"
        netloc = parts.netloc
        if "@" in netloc:
            host = parts.hostname or ""
            if ":" in host:
                host = f"[{host}]"
            if parts.port:
                host = f"{host}:{parts.port}"
            # A user alone may be a password written where redis-cli takes one (redis://pw@h).
            user = f"{parts.username or ''}:" if parts.password is not None else ""
            netloc = f"{user}***@{host}"
        shown: list[str] = []
        for item in parts.query.split("&") if parts.query else []:
            key = item.partition("=")[0]
            if "password" in key.lower():
                shown.append(f"{key}=***")
                break
            shown.append(item)
        query = "&".join(shown)
        # Not urlunsplit: it drops the empty host of unix:///path.
        return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")
    except ValueError:
        return "<unparseable url>"


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
    _opt("http_host", "0.0.0.0", _host, "address of the probe and metrics server", metavar="HOST"),
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


#: The original daemon's Redis settings (its .env): a URL is built from them when none is given.
REDIS_PARTS = ("REDIS_HOST", "REDIS_PORT", "REDIS_PASSWORD")


def redis_url_from_parts(env: Mapping[str, str]) -> str | None:
    """``redis://[:password@]host:port/0`` from REDIS_HOST, REDIS_PORT and REDIS_PASSWORD.

    Only when one of them is set (then host localhost and port 6379 unless given); else None.
    """
    if not any(env.get(name) for name in REDIS_PARTS):
        return None
    host = env.get("REDIS_HOST") or "localhost"
    port = env.get("REDIS_PORT") or "6379"
    if not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"REDIS_PORT: must be a port number from 1 to 65535, got {redact_url(port)!r}")
    bare = host.removeprefix("[").removesuffix("]")
    try:
        if ipaddress.ip_address(bare).version == 6:
            host = f"[{bare}]"
    except ValueError:
        # Not an IP: a host name, and nothing else (an "@" or "/" would change what the URL
        # means: another host, a user, a path).
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,253}", host):
            raise ConfigError(
                f"REDIS_HOST: must be a host name or an IP address, got {redact_url(host)[:100]!r}"
            ) from None
    password = env.get("REDIS_PASSWORD")
    try:
        (password or "").encode()
    except UnicodeEncodeError:  # bytes the environment could not decode: AUTH would fail on them
        raise ConfigError("REDIS_PASSWORD: is not valid UTF-8 text (value not shown)") from None
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"redis://{auth}{host}:{port}/0"


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


def check_cluster_url(url: str) -> None:
    """A ValueError for what redis-py's cluster client refuses only once the worker runs."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        raise ValueError("is a unix:// URL, and a Redis Cluster is reached over TCP")
    db = _query_value(parts.query, "db") or unquote(parts.path).replace("/", "") or "0"  # redis-py's way
    if not (db.isascii() and db.lstrip("+-").isdigit()) or int(db) != 0:
        raise ValueError(f"names database {db}, and a Redis Cluster has only database 0")


def check_tls_files(url: str) -> None:
    """A ValueError for a TLS file of the URL that cannot be read.

    redis-py reports it only at the first connect, as "No such file or directory" for the host.
    """
    query = urlsplit(url).query
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_ca_path"):
        path = _query_value(query, name)
        if path is not None and not os.access(path, os.R_OK):
            # A path is no secret, unless it is the end of a password whose unencoded ? took
            # it there (redis://u:pw?ssl_ca_certs=rest@host): then '@' is in it (redact_url).
            shown = "***" if "@" in path else repr(path)
            raise ValueError(f"{name} names {shown}, which cannot be read")


def _query_value(query: str, key: str) -> str | None:
    """The value of ``key`` in a URL's query as redis-py reads it (the first), or None."""
    values = parse_qs(query).get(key)
    return values[0] if values else None


def from_env(option: Option, env: Mapping[str, str]) -> tuple[str, str | None]:
    """The first of ``option``'s environment variables that is set and not empty, and its value."""
    return next(((e, env[e]) for e in option.envs if env.get(e)), ("", None))
