"""The two command-line tools as a user runs them: exit codes, one-line errors, JSON output."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

import botrix
from botrix import keys
from botrix.config import resolve
from tests.conftest import ROOT, WorkerProcess
from tests.redisproc import RedisServer, free_port


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    for name in ("REDIS_URL", "BOTRIX_REDIS_URL", "CONCURRENCY", "BOTRIX_APP"):
        if env is None or name not in env:
            full_env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "botrix", *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


BAD_WORKER_ARGS = [
    (["--concurrency", "abc"], {}, "--concurrency: must be a whole number, got 'abc'"),
    (["--concurrency", "0"], {}, "--concurrency: must be from 1 to 10000, got 0"),
    ([], {"CONCURRENCY": "-3"}, "CONCURRENCY: must be from 1 to 10000, got -3"),
    (["--queues", ","], {}, "--queues: must name at least one queue"),
    (["--queues", "a b"], {}, "queue name 'a b' must be"),
    (["--redis-url", "http://:hunter2@example"], {}, "must be a redis://, rediss:// or unix:// URL"),
    ([], {"BOTRIX_LEASE_SECONDS": "soon"}, "BOTRIX_LEASE_SECONDS: must be a number of seconds, got 'soon'"),
    (["--log-level", "loud"], {}, "--log-level: must be one of debug, info, warning, error"),
    ([], {"BOTRIX_ADMIN_TOKEN": "hunter2"}, "BOTRIX_ADMIN_TOKEN: must be 16-200 printable ASCII characters"),
    ([], {"BOTRIX_TRACING": "jaeger"}, "BOTRIX_TRACING: must be one of off, otel, got 'jaeger'"),
    ([], {"REDIS_CLUSTER_ENABLED": "maybe"}, "REDIS_CLUSTER_ENABLED: must be on or off, got 'maybe'"),
    (["--no-such-flag"], {}, "unrecognized arguments: --no-such-flag"),
    (["--app", "no_such_module_xyz"], {}, "cannot import handler module 'no_such_module_xyz'"),
    (["--app", "not a module"], {}, "'not a module' is not a Python module name"),
    (["--redis-url", "redis://:hunter2@h:63x9/0"], {}, "has a port that is not a number"),
    ([], {"REDIS_URL": "redis://:hunter2/x@h/0"}, "looks like a password with an unencoded / ? # & or @"),
    ([], {"REDIS_URL": "redis://:hunter2#x@h/0"}, "looks like a password with an unencoded / ? # & or @"),
    ([], {"REDIS_URL": "redis://app:2024#hunter2@h:6379/0"}, "looks like a password with an unencoded"),
    ([], {"REDIS_URL": "unix:///s.sock?password=hunt&er2"}, "looks like a password with an unencoded"),
    (["--redis-url", "redis:/:hunter2@h/0"], {}, "must be a redis://, rediss:// or unix:// URL, got '***'"),
    (["--redis-url", "redis://:hunter2@h/0?ssl_ca_certs=/ca.pem"], {}, "unknown parameter 'ssl_ca_certs'"),
    (["--redis-url", "redis://:hunter2@h/0?db=one"], {}, "a value of 'db' that redis-py refuses"),
    (["--http-host", "my..host"], {}, "--http-host: must be an IP address or a host name"),
    ([], {"REDIS_URL": "redis://u:hunter2\udcffpw@h/0"}, "REDIS_URL: is not valid UTF-8 text"),
    ([], {"REDIS_PORT": "63x9", "REDIS_PASSWORD": "hunter2"}, "REDIS_PORT: must be a port number"),
    ([], {"REDIS_HOST": "a@evil.example", "REDIS_PASSWORD": "hunter2"}, "REDIS_HOST: must be a host name"),
    ([], {"REDIS_HOST": "host/3"}, "REDIS_HOST: must be a host name or an IP address, got 'host/3'"),
    ([], {"REDIS_PASSWORD": "hunter2\udcffx"}, "REDIS_PASSWORD: is not valid UTF-8 text (value not shown)"),
    # redis-py takes these and then fails every command, as if Redis were away for good.
    (
        ["--redis-url", "redis://:hunter2@h/0?socket_timeout=nan"],
        {},
        "has socket_timeout=nan: must be a number",
    ),
    (["--redis-url", "redis://:hunter2@h/0?socket_connect_timeout=-5"], {}, "has socket_connect_timeout=-5"),
    (["--redis-url", "redis://:hunter2@h/0?db=-3"], {}, "has db=-3: must be a number of at least 0"),
    # redis-py drops a path it cannot read as a number: the worker would serve database 0.
    (["--redis-url", "redis://:hunter2@h/1x"], {}, "has a path that is not a database number"),
    (
        ["--redis-url", "rediss://:hunter2@h/0?ssl_ca_certs=/nonexistent/ca.pem"],
        {},
        "the Redis URL's ssl_ca_certs names '/nonexistent/ca.pem', which cannot be read",
    ),
    (
        ["--redis-cluster", "on", "--redis-url", "redis://:hunter2@h:6379/3"],
        {},
        "the Redis URL names database 3, and a Redis Cluster has only database 0",
    ),
    (
        ["--redis-cluster", "on", "--redis-url", "unix:///run/r.sock"],
        {},
        "a Redis Cluster is reached over TCP",
    ),
    (
        ["--http-port", "-1", "--admin-token", "hunter2hunter2hunter2"],
        {},
        "--admin-token: turns on the HTTP admin API, which needs the HTTP server (--http-port is -1",
    ),
    (["--concurrency", "\u0663"], {}, "--concurrency: must be a whole number, got '\u0663'"),
    (["--http-host", "999.1.1.1"], {}, "--http-host: must be an IP address or a host name"),
    (["--http-host", "-1"], {}, "--http-host: must be an IP address or a host name"),
    (["--queues", "redis://u:hunter2@h"], {}, "--queues: queue name 'redis://u:***@h' must be"),
    (["two\nlines"], {}, "unrecognized arguments: two lines"),
    # Port 0: redis-py would connect to 6379 instead.
    (["--redis-url", "redis://h:0/0"], {}, "port that is not a number from 1 to 65535, got 'redis://h:0/0'"),
    # A password with an unencoded ? ends the host part at "u:": the port error shows nothing.
    (
        ["--redis-url", "rediss://u:hunter2?a=b@h/0"],
        {},
        "port that is not a number from 1 to 65535, got 'rediss://***'",
    ),
    (
        ["--redis-url", "rediss://u:1234?ssl_ca_certs=hunter2@h/0"],
        {},
        "the Redis URL's ssl_ca_certs names ***, which cannot be read",
    ),
]


@pytest.mark.parametrize(("args", "env", "message"), BAD_WORKER_ARGS, ids=[m for _, _, m in BAD_WORKER_ARGS])
def test_bad_flag_or_env_is_one_line_and_exit_2(args: list[str], env: dict[str, str], message: str) -> None:
    base = [] if "--app" in args else ["--app", "tests.handlers"]
    result = run("worker", *base, *args, env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("botrix-worker: error: ")
    assert message in lines[0]
    assert "hunter2" not in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("raise RuntimeError('no config file')\n", "failed on import: RuntimeError: no config file ("),
        ("def f(:\n    pass\n", "failed on import: SyntaxError: invalid syntax ("),
        ("import sys\nsys.exit(5)\n", "called sys.exit(5) on import"),
        # Raised in a library it called: the line is still the module's own, on one line.
        ("import json\n\njson.loads('{bad\\n')\n", "failed on import: JSONDecodeError: Expecting property"),
    ],
    ids=["raises", "syntax-error", "exits", "in-a-library"],
)
def test_a_handler_module_that_fails_on_import_is_one_line_and_exit_2(
    tmp_path: Path, source: str, message: str
) -> None:
    """Its own code failed, not botrix: the line says where, and the start fails like a bad flag."""
    (tmp_path / "broken_app.py").write_text(source)
    result = run("worker", "--app", "broken_app", env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("botrix-worker: error: handler module 'broken_app' ")
    assert message in lines[0]
    if "exit" not in message:
        line = 3 if "json" in source else 1
        assert lines[0].endswith(f"({tmp_path / 'broken_app.py'}, line {line})")


def test_a_handler_package_that_fails_on_import_is_imported_once(tmp_path: Path) -> None:
    """--app pkg.mod whose package fails: the line names the package's own line, and the
    package's code ran once (finding that line must not import it again)."""
    (tmp_path / "broken_pkg").mkdir()
    (tmp_path / "broken_pkg" / "__init__.py").write_text("print('init ran')\nraise KeyError('x')\n")
    (tmp_path / "broken_pkg" / "mod.py").write_text("")
    result = run("worker", "--app", "broken_pkg.mod", env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"})
    assert result.returncode == 2, result.stderr
    init = tmp_path / "broken_pkg" / "__init__.py"
    assert result.stderr.strip().endswith(f"failed on import: KeyError: 'x' ({init}, line 2)")
    assert result.stdout.count("init ran") == 1


def test_tracing_without_opentelemetry_installed_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """A process where opentelemetry cannot be imported (a package that fails as a missing
    one would, first on the path) asked for --tracing otel."""
    (tmp_path / "opentelemetry").mkdir()
    (tmp_path / "opentelemetry" / "__init__.py").write_text("raise ImportError('not installed')\n")
    result = run(
        "worker", "--app", "tests.handlers", "--tracing", "otel",
        env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == ["botrix-worker: error: --tracing: needs opentelemetry-api: pip install 'botrix[otel]'"]


def test_worker_without_app_is_refused() -> None:
    result = run("worker")
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == "botrix-worker: error: no handler module: pass --app MODULE (or set BOTRIX_APP)"
    )


def test_taken_http_port_is_one_line_and_exit_1(redis_server: RedisServer, queue: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(
            "worker", "--app", "tests.handlers", "--redis-url", redis_server.url, "--queues", queue,
            "--http-host", "127.0.0.1", "--http-port", str(port),
        )  # fmt: skip
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == f"botrix-worker: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    )


def test_help_lists_every_option_with_its_env() -> None:
    result = run("worker", "--help")
    assert result.returncode == 0
    for text in (
        "--redis-url",
        "REDIS_URL",
        "--worker-id",
        "WORKER_ID",
        "--max-retries",
        "MAX_RETRIES",
        "--health-check-interval",
        "HEALTH_CHECK_INTERVAL",
        "--concurrency",
        "CONCURRENCY",
        "--queues",
        "--shutdown-timeout",
        "--lease-seconds",
        "BOTRIX_APP",
    ):
        assert text in result.stdout


def test_enqueue_wait_job_and_workers(
    redis_server: RedisServer, queue: str, spawn: Callable[..., WorkerProcess]
) -> None:
    url = ["--redis-url", redis_server.url]
    assert run(*url, "workers", "--queue", queue).returncode == 1
    # No worker yet: the wait times out, and says which job it left enqueued.
    late = run(
        *url, "enqueue", "t.echo", "--job-id", "late-1", "--queue", queue, "--wait", "--wait-timeout", "0.2"
    )
    assert late.returncode == 1 and late.stdout == ""
    assert f"timed out waiting for job 'late-1' in queue '{queue}' (it is still enqueued)" in late.stderr
    assert f"warning: no live worker serves queue '{queue}': the job waits until one does" in late.stderr
    assert orjson.loads(run(*url, "queues", "--queue", queue).stdout)[queue]["workers"] == 0
    worker = spawn(redis_server.url, queue)
    deadline = time.monotonic() + 60  # a guard against a hang only
    while run(*url, "workers", "--queue", queue).returncode != 0:  # its health record is written
        assert time.monotonic() < deadline, "the worker never wrote its health record"
    done = run(*url, "enqueue", "t.echo", "--payload", '{"a": 1}', "--queue", queue, "--wait")
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr
    info = orjson.loads(done.stdout)
    assert info["status"] == "completed" and info["result"] == {"echo": {"a": 1}, "attempt": 1}
    shown = run(*url, "job", info["id"])
    assert orjson.loads(shown.stdout)["status"] == "completed"
    # --once: the completed job's id does nothing while its record is kept.
    again = run(
        *url, "enqueue", "t.echo", "--payload", "2", "--queue", queue, "--job-id", info["id"], "--once"
    )
    assert again.returncode == 0, again.stderr
    assert orjson.loads(run(*url, "job", info["id"]).stdout)["result"] == info["result"]
    failed = run(*url, "enqueue", "t.reject", "--queue", queue, "--wait")
    assert failed.returncode == 1
    assert orjson.loads(failed.stdout)["status"] == "dead"
    listed = run(*url, "dead", "list", "--queue", queue)
    assert [d["id"] for d in orjson.loads(listed.stdout)] == [orjson.loads(failed.stdout)["id"]]
    dead_id = orjson.loads(failed.stdout)["id"]
    # The runbook's order (docs/operations.md): the ids after the options.
    assert orjson.loads(run(*url, "dead", "retry", "--queue", queue, dead_id).stdout) == {
        "retried": [dead_id]
    }
    assert orjson.loads(run(*url, "wait", dead_id, "--queue", queue).stdout)["status"] == "dead"
    assert orjson.loads(run(*url, "dead", "retry", "--queue", queue, "--all").stdout) == {
        "retried": [dead_id]
    }
    assert orjson.loads(run(*url, "wait", dead_id, "--queue", queue).stdout)["status"] == "dead"
    assert orjson.loads(run(*url, "dead", "purge", "--queue", queue, dead_id).stdout) == {"purged": 1}
    workers = run(*url, "workers", "--queue", queue)
    assert workers.returncode == 0 and orjson.loads(workers.stdout)[0]["queues"] == [queue]
    # The connection's flags after the command work too; there they win over one before it.
    elsewhere = ["--redis-url", "redis://:pw@127.0.0.1:1/0"]
    for late in (run("workers", "--queue", queue, *url), run(*elsewhere, "workers", "--queue", queue, *url)):
        assert late.returncode == 0 and orjson.loads(late.stdout)[0]["queues"] == [queue]
    depth = orjson.loads(run(*url, "queues", "--queue", queue).stdout)
    assert depth == {
        queue: {
            "pending": 0,
            "active": 0,
            "scheduled": 0,
            "dead": 0,
            "paused": False,
            "rate_limit": None,
            "workers": 1,
        }
    }
    assert orjson.loads(run(*url, "pause", "--queue", queue).stdout) == {"queue": queue, "paused": True}
    assert orjson.loads(run(*url, "queues", "--queue", queue).stdout)[queue]["paused"] is True
    assert orjson.loads(run(*url, "resume", "--queue", queue).stdout) == {"queue": queue, "paused": False}
    worker.signal(signal.SIGTERM)


def test_enqueue_names_the_job_when_redis_fails(own_redis: RedisServer, queue: str) -> None:
    """Redis lost during `enqueue --wait`: the job is enqueued, and the error says which; an
    enqueue that cannot reach Redis names the id it chose, to ask for it or enqueue it again."""
    url = ["--redis-url", own_redis.url]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "botrix",
            *url,
            "enqueue",
            "t.echo",
            "--job-id",
            "cut-1",
            "--queue",
            queue,
            "--wait",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    channel = keys.queue_keys(queue).events
    deadline = time.monotonic() + 60  # a guard against a hang only
    while own_redis.client().pubsub_numsub(channel) != [(channel.encode(), 1)]:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    own_redis.stop(signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3 and out == ""
    assert f"job 'cut-1' in queue '{queue}' was enqueued, but waiting for it failed" in err
    assert "Traceback" not in err

    gone = run(*url, "enqueue", "t.echo", "--queue", queue)
    assert gone.returncode == 3 and "Traceback" not in gone.stderr
    chosen = re.search(r"job '([0-9a-f]{32})' in queue", gone.stderr)
    assert chosen is not None, gone.stderr
    assert f"enqueueing again with --job-id {chosen.group(1)} --once does nothing if it is" in gone.stderr


def test_redis_host_port_and_password_of_the_original_daemon(own_redis: RedisServer, queue: str) -> None:
    """With no URL given, REDIS_HOST, REDIS_PORT and REDIS_PASSWORD (the original daemon's .env)
    make one, the password percent-encoded; a wrong password is never shown."""
    own_redis.password = "p@ss/w#rd:x"
    own_redis.stop()
    own_redis.start()
    parts = {
        "REDIS_HOST": "127.0.0.1",
        "REDIS_PORT": str(own_redis.port),
        "REDIS_PASSWORD": own_redis.password,
    }
    # The worker reads them the same way (its settings, as parsed from flags and environment).
    assert resolve({}, parts).redis_url == f"redis://:p%40ss%2Fw%23rd%3Ax@127.0.0.1:{own_redis.port}/0"
    enqueued = run("enqueue", "t.echo", "--job-id", "from-parts", "--queue", queue, env=parts)
    assert enqueued.returncode == 0, enqueued.stderr
    assert own_redis.client().lrange(keys.queue_keys(queue).pending, 0, -1) == [b"from-parts"]
    wrong = run("queues", env={**parts, "REDIS_PASSWORD": "hunter2"})
    assert wrong.returncode == 3 and "hunter2" not in wrong.stderr and "Traceback" not in wrong.stderr
    # A URL, when given, wins over the parts.
    url_wins = run("queues", env={**parts, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    assert url_wins.returncode == 3


def test_jobs_lists_a_queues_jobs_by_state(redis_server: RedisServer, queue: str) -> None:
    base = ("--redis-url", redis_server.url)
    ids = [orjson.loads(run(*base, "enqueue", "t.echo", "--queue", queue).stdout)["id"] for _ in range(3)]
    later = orjson.loads(run(*base, "enqueue", "t.echo", "--queue", queue, "--delay", "600").stdout)["id"]
    listed = run(*base, "jobs", "--queue", queue, "--offset", "1", "--limit", "5")
    assert listed.returncode == 0, listed.stderr
    assert [(j["id"], j["status"]) for j in orjson.loads(listed.stdout)] == [(i, "queued") for i in ids[1:]]
    scheduled = orjson.loads(run(*base, "jobs", "--queue", queue, "--state", "scheduled").stdout)
    assert [(j["id"], j["status"]) for j in scheduled] == [(later, "scheduled")]
    assert orjson.loads(run(*base, "jobs", "--queue", queue, "--state", "running").stdout) == []


def test_admin_cli_errors(redis_server: RedisServer) -> None:
    bad_json = run("--redis-url", redis_server.url, "enqueue", "t.echo", "--payload", "{nope")
    assert bad_json.returncode == 2 and "--payload is not valid JSON" in bad_json.stderr
    missing = run("--redis-url", redis_server.url, "job", "no-such-job")
    assert missing.returncode == 1 and "no job 'no-such-job'" in missing.stderr
    down = run("--redis-url", f"redis://:hunter2@127.0.0.1:{free_port()}/0", "job", "x")
    assert down.returncode == 3
    assert "unreachable" in down.stderr and "hunter2" not in down.stderr and "Traceback" not in down.stderr
    redis_server.client().set(keys.queue_keys("default").job("overwritten"), "text")
    foreign = run("--redis-url", redis_server.url, "job", "--queue", "default", "overwritten")
    assert foreign.returncode == 3 and "Traceback" not in foreign.stderr
    assert (
        "a botrix key holds a type botrix never writes (WRONGTYPE botrix:{default}:job:overwritten is not "
        "a hash: only botrix may write its keys)" in foreign.stderr
    )
    huge = run("--redis-url", redis_server.url, "enqueue", "t.echo", "--payload", "[1e400]")
    assert huge.returncode == 2 and "--payload is not valid JSON" in huge.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["enqueue", "t.echo", "--delay", "inf"], "--delay: must be a finite number of seconds >= 0"),
        (["enqueue", "t.echo", "--job-id", "a b"], "job id"),
        (["enqueue", "t.echo", "--queue", "a b"], "queue name"),
        (["wait", "x", "--timeout", "nan"], "--timeout: must be a finite number of seconds >= 0"),
        (["dead", "list", "--limit", "0"], "--limit: must be a whole number from 1 to 1000000"),
        (["dead", "list", "--limit", "99999999999999999999"], "--limit: must be a whole number from 1"),
        (
            ["enqueue", "t.echo", "--delay", "1e300"],
            "--delay: must be a finite number of seconds >= 0, at most",
        ),
        (["enqueue", "t\udcff"], "argument type: must be UTF-8 text"),
        (["job", "x", "--queue", "a b"], "queue name"),
        (["dead", "retry", "--queue", "q", "a b"], "job id"),
        (["dead", "purge", "--queue", "q"], "'dead purge' takes job ids, or --all for every dead job"),
        (["dead", "retry", "x", "--all"], "'dead retry' takes job ids, or --all for every dead job"),
        (["dead", "list", "--queue", "q", "some-id"], "'dead list' takes no ids"),
        (["queues", "--queue", "{q}"], "queue name"),
        (["limit", "--max", "0", "--per", "1"], "--max: must be a whole number from 1 to 1000000000"),
        (["limit", "--max", "5", "--per", "0"], "--per: must be from 0.001 to 604800 seconds"),
        (["limit", "--max", "5", "--per", "nan"], "--per: must be from 0.001 to 604800 seconds"),
        (["limit", "--max", "5"], "'limit' takes --max N --per SECONDS together, or --off"),
        (["limit", "--off", "--max", "5", "--per", "1"], "'limit' takes --max N --per SECONDS together"),
        (["enqueue", "t.echo", "--timeout", "0"], "--timeout: must be a number of seconds > 0"),
        (["enqueue", "t.echo", "--max-retries", "-1"], "--max-retries: must be a whole number from 0"),
        (["enqueue", "t.echo", "--delay", "soon"], "--delay: must be a finite number of seconds >= 0"),
        (["--redis-url", "localhost:6379", "job", "x"], "--redis-url: must be a redis://"),
        (["--redis-url", "redis://:hunter2@h/0?bogus=1", "job", "x"], "unknown parameter 'bogus'"),
        (["--redis-url", "redis://h/0", "worker", "--app", "m"], "'worker' takes its own flags"),
        (["--redis-url", "", "job", "x"], "--redis-url: must be a redis://"),
        (["enqueue", ""], "argument type: must be a handler's name, 1 to 200 characters"),
        (["enqueue", "t" * 201], "argument type: must be a handler's name, 1 to 200 characters, got 201"),
        (["dead", "list", "--limit", "\u0663"], "--limit: must be a whole number from 1"),
        (["jobs", "--state", "completed"], "--state: invalid choice: 'completed'"),
        (["jobs", "--limit", "0"], "--limit: must be a whole number from 1 to 1000000, got '0'"),
        # A URL where the command was due (redis-cli's -u habit): not repeated with its password.
        (
            ["--redis-url", "redis://h/0", "redis://default:hunter2@h:6379/0", "queues"],
            "invalid choice: 'redis://default:***@h:6379/0'",
        ),
        (["--redis-url", "redis://h/0", "default:hunter2@h", "queues"], "invalid choice: '***'"),
        (
            ["--redis-url", "redis://h/0", "redis://u:hunt'er2@h/0", "queues"],
            "invalid choice: 'redis://u:***@h/0'",
        ),
        (
            ["--redis-url", "redis://h/0", "redis://u:hunt er2@h", "queues"],
            "invalid choice: 'redis://u:***@h'",
        ),
        (
            ["--redis-url", "redis://h/0", "redis://h/0?password=hunter2", "queues"],
            "'redis://h/0?password=***'",
        ),
        (["enqueue", "t.echo", "--queue=redis://u:hunter2@h"], "got 'redis://u:***@h'"),
        # redis-cli's password flag, which botrix has not: the word after it is hidden.
        (["-a", "hunter2pw", "queues"], "invalid choice: '***'"),
        (["dead", "-a", "hunter2pw", "list"], "invalid choice: '***'"),
        # A lone '@' is no secret: the rule that names it is left whole.
        (["dead", "retry", "--queue", "q", "@", "bad id!"], "_ . : @ / + = # -, got 'bad id!'"),
        (
            ["enqueue", "t.echo", "--max-retries", "5000"],
            "--max-retries: must be a whole number from 0 to 1000,",
        ),
    ],
)
def test_admin_cli_bad_usage_is_one_line_and_exit_2(
    redis_server: RedisServer, args: list[str], message: str
) -> None:
    full = args if args[0] == "--redis-url" else ["--redis-url", redis_server.url, *args]
    result = run(*full)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and re.match(r"botrix( \w+)?: error: ", lines[0]), result.stderr
    assert message in lines[0]
    assert "hunter2" not in result.stderr


def test_a_log_reader_that_goes_away_does_not_fail_the_exit(redis_server: RedisServer, queue: str) -> None:
    """stdout is a pipe whose reader dies (a log shipper): the worker keeps going and exits 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "botrix", "worker", "--app", "tests.handlers", "--redis-url", redis_server.url,
         "--queues", queue, "--http-port", "-1", "--log-format", "json"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        while b"worker.started" not in proc.stdout.readline():
            assert proc.poll() is None
        proc.stdout.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()


def _fresh_python(code: str) -> list[str]:
    """The lines ``code`` prints in an interpreter of its own (this one has imported botrix)."""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return done.stdout.splitlines()


def test_the_entry_point_notes_stop_signals_before_any_heavy_import() -> None:
    """The window in which SIGTERM still kills a starting worker is the interpreter's own start:
    the packages above the entry point (``botrix``, ``botrix.cli``) import nothing when loaded."""
    out = _fresh_python(
        "import sys, signal; import botrix.cli.start as s; s.EarlyStop();"
        "print(signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL);"
        "heavy = ('botrix', 'dataclasses', 'orjson', 'argparse', 'typing');"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))"
    )
    assert out == ["True", "['botrix', 'botrix.cli', 'botrix.cli.start']"]


def test_the_package_exports_resolve_on_first_use() -> None:
    """``from botrix import ...`` of every documented name works although none is imported up front."""
    out = _fresh_python(
        "import botrix; from botrix import *;"
        "print(sorted(n for n in botrix.__all__ if getattr(botrix, n, None) is None));"
        "print(sorted(set(botrix.__all__) - set(dir(botrix))), JobStatus('queued').name, callable(handler))"
    )
    assert out == ["[]", "[] QUEUED True"]
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        botrix.nothing  # noqa: B018


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_during_start_up_is_honoured_once_the_worker_runs(
    redis_server: RedisServer, queue: str, tmp_path: Path, sig: signal.Signals
) -> None:
    """The signal arrives while the handler module is still being imported: no kill by signal,
    no KeyboardInterrupt traceback; the worker starts, claims nothing and stops, exit 0."""
    marker = tmp_path / "importing"
    pending = keys.queue_keys(queue).pending
    redis_server.client().rpush(pending, b'{"type":"t.slow_import","payload":{}}')
    proc = subprocess.Popen(
        [sys.executable, "-m", "botrix", "worker", "--app", "tests.slow_import", "--redis-url",
         redis_server.url, "--queues", queue, "--http-port", "-1", "--log-format", "json"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "BOTRIX_TEST_IMPORT_MARKER": str(marker)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60  # a hang guard
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, out.decode()
    assert b"Traceback" not in out
    events = [orjson.loads(line) for line in out.splitlines() if line.startswith(b"{")]
    stopping = next(e for e in events if e["event"] == "worker.stopping")
    assert stopping["reason"] == sig.name and events[-1]["event"] == "worker.stopped"
    assert redis_server.client().llen(pending) == 1  # nothing was claimed


def test_the_cli_answers_over_what_others_wrote(own_redis: RedisServer, queue: str) -> None:
    """A health record of another shape, a non-UTF-8 worker name on a record, a payload nested
    deeper than orjson writes: each command still answers, exit 0, no traceback."""
    r = own_redis.client()
    r.zadd(keys.WORKERS, {b"evil": 99_999_999_999_999})
    r.set(keys.worker_health("evil"), b'{"queues": null, "status": "running"}')
    k = keys.queue_keys(queue)
    r.hset(k.job("odd"), mapping={"status": "running", "envelope": b"{}", "worker": b"\xff"})
    r.rpush(k.pending, b'{"id":"deep","type":"t.ignore","payload":' + b"[" * 300 + b"1" + b"]" * 300 + b"}")
    url = ["--redis-url", own_redis.url]
    for command in (["queues"], ["jobs", "--queue", queue], ["job", "odd", "--queue", queue]):
        result = run(*url, *command)
        assert result.returncode == 0 and "Traceback" not in result.stderr, (command, result.stderr)
    result = run(*url, "workers", "--queue", queue)  # the record is not botrix's: none serves it
    assert (result.returncode, result.stdout, result.stderr) == (1, "[]\n", "")
    assert '"worker": "\ufffd"' in run(*url, "job", "odd", "--queue", queue).stdout
    result = run(*url, "enqueue", "t.echo", "--queue", queue, "--job-id", "")
    assert result.returncode == 2 and "job id must be" in result.stderr
