"""Settings resolution, URL redaction, envelope validation and backoff bounds."""

from __future__ import annotations

import random
import re

import pytest

from botrix.client import Client
from botrix.config import Settings, resolve
from botrix.errors import ConfigError, EnvelopeError
from botrix.executor import backoff_ms
from botrix.model import Claimed, parse_job
from botrix.redis_url import check_redis_url, redact_url


def test_flags_beat_prefixed_env_beat_seed_env_beat_defaults() -> None:
    env = {"BOTRIX_CONCURRENCY": "7", "CONCURRENCY": "9", "MAX_RETRIES": "1", "WORKER_ID": "w1"}
    s = resolve({"concurrency": None, "max_retries": "4", "app": ["a.b", "c,d"]}, env)
    assert (s.concurrency, s.max_retries, s.worker_id, s.app) == (7, 4, "w1", ("a.b", "c", "d"))
    assert resolve({}, {}).concurrency == Settings().concurrency == 5


def test_the_bull_workers_variables_and_log_levels_are_read() -> None:
    """The BullMQ and Bull workers' environment files keep working (docs/configuration.md)."""
    env = {
        "WORKER_CONCURRENCY": "3",
        "HEALTH_CHECK_PORT": "9091",
        "LOG_LEVEL": "warn",
        "REMOVE_ON_FAIL": "25",
    }
    s = resolve({}, env)
    assert (s.concurrency, s.http_port, s.log_level, s.dead_letter_max) == (3, 9091, "warning", 25)
    assert resolve({}, {"WORKER_HEALTH_PORT": "3003", "LOG_LEVEL": "FATAL"}).http_port == 3003
    assert [resolve({}, {"LOG_LEVEL": level}).log_level for level in ("trace", "fatal", "Info")] == [
        "debug",
        "error",
        "info",
    ]
    with pytest.raises(ConfigError, match=r"^LOG_LEVEL: must be one of debug, info, warning, error, trace"):
        resolve({}, {"LOG_LEVEL": "verbose"})


def test_bad_values_name_their_source() -> None:
    with pytest.raises(ConfigError, match=r"^HEALTH_CHECK_INTERVAL: must be a number of seconds"):
        resolve({}, {"HEALTH_CHECK_INTERVAL": "often"})


def test_the_seed_cluster_nodes_are_read_and_need_cluster_mode() -> None:
    env = {"REDIS_CLUSTER_ENABLED": "true", "REDIS_CLUSTER_NODES": "redis-1:6379, [::1]:7000,10.0.0.2:6380,"}
    s = resolve({}, env)
    assert s.redis_cluster and s.redis_cluster_nodes == (("redis-1", 6379), ("::1", 7000), ("10.0.0.2", 6380))
    with pytest.raises(ConfigError, match=r"^REDIS_CLUSTER_NODES: needs --redis-cluster on"):
        resolve({}, {"REDIS_CLUSTER_NODES": "redis-1:6379"})
    no_host = "does not start with a host name or an IP address"
    for bad, why in [
        ("redis-1", "is not host:port"),
        ("redis-1:0", "is not host:port"),
        ("redis-1:6379x", "is not host:port"),
        ("bad host:6379", no_host),
        ("[redis-1]:6379", no_host),
        ("::1:7000", no_host),
        ("[::1:7000", no_host),
        ("::1]:7000", no_host),
        ("[10.0.0.2]:6380", no_host),
        (":6379", no_host),
    ]:
        with pytest.raises(ConfigError, match=rf"^REDIS_CLUSTER_NODES: .*{re.escape(why)}"):
            resolve({}, {**env, "REDIS_CLUSTER_NODES": bad})
    with pytest.raises(ConfigError, match=r"^cluster_nodes: needs --redis-cluster on"):
        Client.from_url("redis://localhost:6379/0", cluster_nodes=[("redis-1", 6379)])
    # A URL pasted in by mistake: named, its password not shown.
    with pytest.raises(ConfigError) as caught:
        resolve({}, {**env, "REDIS_CLUSTER_NODES": "redis://:s3cret@redis-1:6379"})
    assert "s3cret" not in str(caught.value) and "***@redis-1:6379" in str(caught.value)
    # An empty prefixed variable leaves the next one in charge, as for every option.
    assert resolve({}, {**env, "BOTRIX_REDIS_CLUSTER_NODES": ""}).redis_cluster_nodes[0] == ("redis-1", 6379)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        # Python's "$" matches before a final newline: "w1\n" would pass a check that uses it,
        # then break the hand-formatted JSON of every event the worker writes.
        ({"WORKER_ID": "w1\n"}, "WORKER_ID"),
        ({"BOTRIX_WORKER_ID": "w1\n"}, "BOTRIX_WORKER_ID"),
    ],
)
def test_a_value_with_a_line_break_is_refused(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        resolve({}, env)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://app:s3cret@host/1", "rediss://app:***@host/1"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("redis://:s3cret@[::1]:6379/0", "redis://:***@[::1]:6379/0"),
        ("redis://u:s3cret@h/0?db=1&ssl_password=k3y", "redis://u:***@h/0?db=1&ssl_password=***"),
        ("unix:///run/redis.sock?password=s3cr@t", "unix:///run/redis.sock?password=***"),
        ("redis://h:6379/0?password=s3@cret&db=1", "redis://h:6379/0?password=***"),
        ("localhost:6379", "localhost:6379"),
        # An unencoded / ? # & in a password: the URL parser misreads it, nothing is shown.
        ("redis://:s3/cret@h:6379/0", "redis://***"),
        ("redis://u:s3@cr/et@h/0", "redis://***"),
        ("redis://:s3cr#et@h:6379", "redis://***"),
        ("redis://:s3cr?et@h", "redis://***"),
        ("redis://app:2024#s3cret@h:6379/0", "redis://***"),
        ("redis://default:4821?s3cret@h:6379/0", "redis://***"),
        ("unix:///s.sock?password=s3c&ret", "unix://***"),
        ("rediss://h/0?ssl_password=s3c&ret=x", "rediss://h/0?ssl_password=***"),
        ("redis:/:s3cret@h/0", "***"),
        # A user alone: redis-cli reads it as the password (redis://password@host).
        ("redis://s3cret@host:6379/0", "redis://***@host:6379/0"),
    ],
)
def test_redact_url_hides_passwords(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "s3" not in shown and "cret" not in shown


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "rediss://app:p%2Fw%40x@redis.internal:6380/1?ssl_cert_reqs=none&ssl_ca_certs=/ca.pem",
        "redis://[::1]:6379/0",
        "redis://:pw@[fe80::1%25eth0]:6379",
        "unix://app@/run/redis.sock?db=2&password=pw",
        "redis://h/0?client_name=app@host",
        "redis://h:6379/0?password=p@ss",
        # Paths redis-py reads as a database, or ignores for ?db=.
        "redis://h/0/",
        "redis://h/%31",
        "redis://h/x?db=2",
    ],
)
def test_valid_redis_urls_are_taken(url: str) -> None:
    assert check_redis_url(url) == url


def claimed(raw: bytes) -> Claimed:
    return Claimed("id-1", raw, 1, 1, 0)


def test_minimal_envelope_takes_defaults() -> None:
    job = parse_job(claimed(b'{"type": "x"}'), "q")
    assert (job.id, job.type, job.payload, job.correlation_id, job.max_retries, job.timeout) == (
        "id-1",
        "x",
        None,
        "id-1",
        None,
        None,
    )


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"null",
        b'"x"',
        b'{"type": ""}',
        b'{"type": "x", "max_retries": true}',
        b'{"type": "x", "timeout": "NaN"}',
        b'{"type": "x", "correlation_id": 5}',
        b'{"type": "x", "id": "other"}',
    ],
)
def test_bad_envelopes_raise_a_readable_error(raw: bytes) -> None:
    with pytest.raises(EnvelopeError):
        parse_job(claimed(raw), "q")


def test_backoff_is_full_jitter_under_the_cap() -> None:
    rng = random.Random(1)
    delays = [backoff_ms(attempt, 1.0, 30.0, rng) for attempt in range(1, 30) for _ in range(20)]
    assert min(delays) >= 0 and max(delays) <= 30_000
    assert all(backoff_ms(1, 1.0, 30.0, rng) <= 1000 for _ in range(100))


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "localhost", "probe-1.internal", "0", "127.1", "10.1", ""])
def test_hosts_the_resolver_takes_are_taken(host: str) -> None:
    """Short IPv4 forms (0 is 0.0.0.0) are addresses to the resolver, unlike 999.1.1.1."""
    assert resolve({"http_host": host}, {}).http_host == host
