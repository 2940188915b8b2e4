"""Bad input, fuzzed with hypothesis: the envelope parser, a live worker fed garbage, the enqueue path.

The parser must refuse anything but a valid envelope with :class:`EnvelopeError` (never another
exception), accept every envelope docs/protocol.md calls valid, and give a reason that names the
offending field. A worker fed a mix of garbage and good envelopes must run every good one,
dead-letter every bad one verbatim with a readable reason, and keep going. The client refuses
what it must at enqueue time.

Runs are deterministic (``derandomize``) and leave no example database in the repository.
"""

from __future__ import annotations

import json
import math
import string
import sys
import tempfile
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aredis
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from botrix import keys
from botrix.app import Worker
from botrix.client import Client
from botrix.errors import EnvelopeError, JobNotFoundError, PayloadTooLargeError
from botrix.model import (
    MAX_ID_LENGTH,
    MAX_TYPE_LENGTH,
    Claimed,
    Job,
    JobStatus,
    build_envelope,
    parse_job,
    validate_job_id,
)
from botrix.registry import default_registry
from tests.conftest import eventually, running_worker
from tests.redisproc import RedisServer

# No example database (database=None below) and no caches in the repository either.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "botrix-hypothesis")

FAST = settings(derandomize=True, database=None, deadline=None, max_examples=300)
LIVE = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=25,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

GENERATED_ID = "1700000000000-1"  # what the claim script calls a job whose envelope has no usable id
ORJSON_MAX_DEPTH = 1024

# -- strategies ------------------------------------------------------------------------------

#: Integers orjson can write (it refuses anything past 64 bits).
ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
json_scalars = (
    st.none() | st.booleans() | ints | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
#: Values no protocol field accepts, whichever it is (strings are handled per field).
not_a_scalar = st.lists(json_scalars, max_size=3) | st.dictionaries(
    st.text(max_size=5), json_scalars, max_size=3
)

#: Ids every version of the id rule accepts; FIELDS["id"] also draws ids it may refuse.
ids_ok = st.text(
    alphabet=string.ascii_letters + string.digits + "_.:@/+=#-", min_size=1, max_size=MAX_ID_LENGTH
)
type_ok = st.text(min_size=1, max_size=MAX_TYPE_LENGTH)

FIELDS: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
    # name: (valid values, values of any shape, valid or not)
    "type": (type_ok, json_values | st.text(min_size=MAX_TYPE_LENGTH - 2, max_size=MAX_TYPE_LENGTH + 3)),
    "id": (
        st.none() | ids_ok,
        json_values | st.just("") | st.text(max_size=5).map(lambda s: "{" + s) | st.text(max_size=210),
    ),
    "max_retries": (
        st.none() | st.integers(0, 1000),
        ints | st.floats() | st.booleans() | st.text(max_size=5) | not_a_scalar,
    ),
    "timeout": (
        st.none() | st.floats(min_value=1e-9, allow_infinity=False) | st.integers(1, 10**9),
        st.floats() | ints | st.booleans() | st.text(max_size=5) | not_a_scalar,
    ),
    "correlation_id": (
        st.none() | st.text(min_size=1, max_size=MAX_ID_LENGTH),
        json_values | st.just("") | st.text(min_size=MAX_ID_LENGTH, max_size=MAX_ID_LENGTH + 3),
    ),
    "payload": (json_values, json_values),
    "queue": (json_values, json_values),
}
unknown_fields = st.dictionaries(
    st.text(max_size=12).filter(lambda k: k not in FIELDS and k != "enqueued_at"), json_values, max_size=4
)


@st.composite
def envelopes(draw: st.DrawFn, *, valid: bool) -> dict[str, Any]:
    """An envelope dict; with ``valid=False`` any field may hold anything (or be missing)."""
    envelope: dict[str, Any] = draw(unknown_fields)
    for name, (good, anything) in FIELDS.items():
        if name == "type" and valid:
            envelope[name] = draw(good)
        elif draw(st.booleans()):
            envelope[name] = draw(good if valid else good | anything)
    return envelope


# -- the oracle: docs/protocol.md's table, written independently of botrix/model.py ------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def usable_id(value: Any) -> bool:
    """The id rule is the client's (validate_job_id): the claim script must take as given exactly
    the ids the client accepts, which test_worker_and_protocol_agree_on_foreign_envelope_ids
    checks end to end."""
    if not isinstance(value, str):
        return False
    try:
        validate_job_id(value)
    except ValueError:
        return False
    return True


def invalid_fields(envelope: dict[str, Any]) -> list[str]:
    """The fields that break the protocol's rules (as decoded from JSON)."""
    bad = []
    t = envelope.get("type")
    if not (isinstance(t, str) and 1 <= len(t) <= MAX_TYPE_LENGTH):
        bad.append("type")
    i = envelope.get("id")
    if i is not None and not usable_id(i):
        bad.append("id")
    r = envelope.get("max_retries")
    if r is not None and not (_is_int(r) and 0 <= r <= 1000):
        bad.append("max_retries")
    s = envelope.get("timeout")
    if s is not None and not ((_is_int(s) or isinstance(s, float)) and math.isfinite(s) and s > 0):
        bad.append("timeout")
    c = envelope.get("correlation_id")
    if c is not None and not (isinstance(c, str) and 1 <= len(c) <= MAX_ID_LENGTH):
        bad.append("correlation_id")
    return bad


def claimed_id(envelope: Any) -> str:
    """The id the claim script gives an entry: its own when usable, else a generated one."""
    given = envelope.get("id") if isinstance(envelope, dict) else None
    return given if isinstance(given, str) and usable_id(given) else GENERATED_ID


def parse(raw: bytes, job_id: str = GENERATED_ID) -> Job | EnvelopeError:
    """parse_job's answer; any exception other than EnvelopeError fails the test."""
    try:
        return parse_job(Claimed(job_id, raw, 1, 1, 0), "q")
    except EnvelopeError as exc:
        assert str(exc).strip(), "an EnvelopeError without a reason"
        return exc


# -- (a) the parser ---------------------------------------------------------------------------


@FAST
@given(st.binary(max_size=512))
def test_parser_on_random_bytes(raw: bytes) -> None:
    parse(raw)


@FAST
@given(json_values)
def test_parser_on_random_json_values(value: Any) -> None:
    result = parse(orjson.dumps(value))
    if not isinstance(value, dict):
        assert isinstance(result, EnvelopeError)
        assert "must be a JSON object" in str(result)


@FAST
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
        max_leaves=12,
    ),
    st.sampled_from(["type", "id", "max_retries", "timeout", "payload"]),
)
def test_parser_on_json_text_orjson_may_refuse(value: Any, field: str) -> None:
    """Text the standard library writes: integers past 64 bits, NaN, Infinity."""
    parse(json.dumps({field: value, "type": "t.echo"} if field != "type" else {"type": value}).encode())


@FAST
@given(envelopes(valid=False))
def test_parser_agrees_with_the_protocol_table(envelope: dict[str, Any]) -> None:
    raw = orjson.dumps(envelope)
    decoded = orjson.loads(raw)  # what is on the wire: orjson writes inf as null, and so on
    job_id = claimed_id(decoded)
    result = parse(raw, job_id)
    bad = invalid_fields(decoded)
    if bad:
        assert isinstance(result, EnvelopeError), f"accepted although {bad} break the rules"
        assert any(f"'{name}'" in str(result) for name in bad), (str(result), bad)
    else:
        assert isinstance(result, Job), f"refused a valid envelope: {result}"


@FAST
@given(envelopes(valid=True))
def test_valid_envelopes_parse_and_ignore_unknown_fields(envelope: dict[str, Any]) -> None:
    raw = orjson.dumps(envelope)
    decoded = orjson.loads(raw)
    job_id = claimed_id(decoded)
    job = parse(raw, job_id)
    assert isinstance(job, Job), job
    assert job.id == job_id and job.type == decoded["type"] and job.payload == decoded.get("payload")
    assert job.correlation_id == (decoded.get("correlation_id") or job_id)
    assert job.max_retries == decoded.get("max_retries")
    assert job.timeout == (None if decoded.get("timeout") is None else float(decoded["timeout"]))


@FAST
@given(st.integers(1, 3000), st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]), st.booleans())
def test_parser_on_deeply_nested_json(depth: int, brackets: tuple[bytes, bytes], in_payload: bool) -> None:
    nested = brackets[0] * depth + (b"1" if brackets[0] == b'{"a":' else b"") + brackets[1] * depth
    raw = b'{"type":"t.echo","payload":' + nested + b"}" if in_payload else nested
    result = parse(raw)
    if not in_payload:
        assert isinstance(result, EnvelopeError)
    elif depth + 1 <= ORJSON_MAX_DEPTH:
        assert isinstance(result, Job)
    else:
        assert isinstance(result, EnvelopeError) and "not valid JSON" in str(result)


@settings(FAST, max_examples=150)
@given(
    envelopes(valid=True),
    st.binary(min_size=1, max_size=8).filter(lambda b: not _utf8(b)),
    st.sampled_from(["type", "payload", "correlation_id", "unknown"]),
)
def test_parser_on_invalid_utf8(envelope: dict[str, Any], junk: bytes, field: str) -> None:
    envelope[field] = "MARK"
    raw = orjson.dumps(envelope).replace(b'"MARK"', b'"' + junk + b'"', 1)
    result = parse(raw, claimed_id(envelope))
    assert isinstance(result, EnvelopeError) and "not valid JSON" in str(result)


def test_parser_on_a_huge_envelope() -> None:
    """Size is the claim script's business (max envelope bytes); the parser just parses."""
    raw = orjson.dumps({"type": "t.echo", "payload": [{"k": "v" * 100, "n": i} for i in range(20_000)]})
    assert len(raw) > 2_000_000
    job = parse(raw)
    assert isinstance(job, Job) and len(job.payload) == 20_000


def _utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# -- (b) a live worker fed garbage ------------------------------------------------------------

MAX_BYTES = 2048

garbage_entries = st.one_of(
    st.binary(max_size=300),
    st.binary(min_size=1, max_size=8)
    .filter(lambda b: not _utf8(b))
    .map(lambda j: b'{"type":"t.echo","payload":"' + j + b'"}'),
    json_values.filter(lambda v: not isinstance(v, dict)).map(orjson.dumps),
    # Envelopes that break a rule. No usable string id: two entries naming one id would be
    # one job (the protocol's idempotency), which is not what this test counts.
    envelopes(valid=False)
    .map(lambda e: {k: v for k, v in e.items() if not (k == "id" and isinstance(v, str))})
    .filter(lambda e: bool(invalid_fields(orjson.loads(orjson.dumps(e)))))
    .map(orjson.dumps),
    st.integers(ORJSON_MAX_DEPTH, ORJSON_MAX_DEPTH + 200).map(
        lambda d: b'{"type":"t.echo","payload":' + b"[" * d + b"]" * d + b"}"
    ),
    st.text(min_size=1, max_size=20).map(lambda t: orjson.dumps({"type": f"no.such.{t}", "payload": 1})),
    st.integers(MAX_BYTES + 1, MAX_BYTES + 5000).map(
        lambda n: b'{"type":"t.echo","payload":"' + b"x" * n + b'"}'
    ),
)


@pytest.fixture
async def fuzz_worker(redis_server: RedisServer, queue: str) -> AsyncIterator[Worker]:
    """One worker for every example of the test: it must survive them all."""
    async with running_worker(redis_server.url, queue, max_payload_bytes=MAX_BYTES) as worker:
        yield worker


def _kind(raw: bytes) -> str:
    """A label for the statistics (pytest --hypothesis-show-statistics)."""
    if len(raw) > MAX_BYTES:
        return "oversized"
    result = parse(raw)
    if isinstance(result, Job):
        return "valid" if default_registry.get(result.type) else "unknown type"
    reason = str(result)
    return reason.partition(":" if reason.startswith("envelope") else " must")[0]


def _expected_ok(raw: bytes) -> bool:
    """Whether an entry should run: small enough, a valid envelope, a registered type."""
    if len(raw) > MAX_BYTES:
        return False
    job = parse(raw)
    return isinstance(job, Job) and default_registry.get(job.type) is not None


@settings(LIVE, max_examples=40)
@given(
    good=st.lists(json_values, max_size=4),
    bad=st.lists(garbage_entries, min_size=1, max_size=10),
    order=st.randoms(use_true_random=False),
)
async def test_worker_survives_garbage_and_runs_the_good_jobs(
    redis_server: RedisServer,
    client: Client,
    queue: str,
    fuzz_worker: Worker,
    good: list[Any],
    bad: list[bytes],
    order: Any,
) -> None:
    run = uuid.uuid4().hex[:8]
    good_ids = [f"good-{run}-{i}" for i in range(len(good))]
    entries = [
        orjson.dumps({"id": i, "type": "t.echo", "payload": p}) for i, p in zip(good_ids, good, strict=True)
    ]
    entries += bad
    order.shuffle(entries)
    ok_garbage = sum(_expected_ok(raw) for raw in bad)  # random bytes that happen to be valid
    for raw in bad:
        event(_kind(raw))
    dead_before = {d.id for d in await client.dead(queue, count=10_000)}

    async with aredis.Redis.from_url(redis_server.url) as r:
        await r.rpush(keys.queue_keys(queue).pending, *entries)
    for job_id, payload in zip(good_ids, good, strict=True):
        info = await client.wait(job_id, timeout=30, queue=queue)
        assert info.status is JobStatus.COMPLETED, info.error
        assert info.result == {"echo": payload, "attempt": 1}
    want_dead = len(dead_before) + len(bad) - ok_garbage

    async def settled() -> dict[str, int] | None:
        depth = await client.depth(queue)
        return depth if depth["dead"] >= want_dead and depth["pending"] == depth["active"] == 0 else None

    depth = await eventually(settled, what="every entry settled")
    assert depth == {"pending": 0, "active": 0, "scheduled": 0, "dead": want_dead}

    new = [d for d in await client.dead(queue, count=10_000) if d.id not in dead_before]
    assert Counter(d.envelope for d in new) == Counter(
        raw.decode(errors="replace") for raw in bad if not _expected_ok(raw)
    )
    for info in new:
        assert info.status is JobStatus.DEAD
        assert info.error is not None
        message = info.error["message"]
        assert isinstance(message, str) and message.strip() and message.isprintable(), message
        assert info.error["type"] in ("EnvelopeError", "UnknownJobType"), info.error
    assert not fuzz_worker.stop_event.is_set()
    assert fuzz_worker.state.heartbeat_running


# -- (c) the enqueue path ---------------------------------------------------------------------


@LIVE
@given(
    limit=st.integers(64, 4096),
    payload=json_values | st.text(max_size=5000) | st.binary(max_size=3000).map(lambda b: b.hex()),
)
async def test_enqueue_refuses_payloads_over_the_limit(
    redis_server: RedisServer, queue: str, limit: int, payload: Any
) -> None:
    job_id = f"size-{uuid.uuid4().hex}"
    envelope = build_envelope(
        job_id, "t.echo", payload, queue, max_retries=None, timeout=None, correlation_id=None
    )
    async with Client.from_url(redis_server.url, max_payload_bytes=limit) as client:
        if len(envelope) > limit:
            with pytest.raises(
                PayloadTooLargeError, match=f"{len(envelope)} bytes, over the {limit} byte limit"
            ):
                await client.enqueue("t.echo", payload, queue=queue, job_id=job_id)
            assert await client.depth(queue) == {"pending": 0, "active": 0, "scheduled": 0, "dead": 0}
        else:
            assert await client.enqueue("t.echo", payload, queue=queue, job_id=job_id) == job_id
            info = await client.job(job_id, queue)
            assert info.status is JobStatus.QUEUED and info.envelope.encode() == envelope
            await client.purge_dead(queue)  # keep the queue small for the next example
            async with aredis.Redis.from_url(redis_server.url) as r:
                await r.delete(keys.queue_keys(queue).pending, keys.queue_keys(queue).job(job_id))


async def test_default_payload_limit_is_one_mebibyte(client: Client, queue: str) -> None:
    with pytest.raises(PayloadTooLargeError):
        await client.enqueue("t.echo", "x" * 1_048_576, queue=queue)
    assert (await client.depth(queue))["pending"] == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"delay": 1e12}, "delay must be a finite number of seconds up to"),
        ({"payload": {1, 2}}, "job cannot be stored as JSON"),
        ({"payload": "bad-\udcff"}, "job cannot be stored as JSON"),
        ({"type": "t.\udcff"}, "job cannot be stored as JSON"),
        ({"correlation_id": "\udcff"}, "job cannot be stored as JSON"),
    ],
)
async def test_enqueue_refuses_what_could_not_be_stored_or_read_back(
    client: Client, queue: str, kwargs: dict[str, Any], message: str
) -> None:
    """A delay past any sane date (its run time would break every reader of the record), or
    something JSON cannot hold: a ValueError naming it, and nothing written."""
    args: dict[str, Any] = {"type": "t.echo", "payload": None, **kwargs}
    with pytest.raises(ValueError, match=message):
        await client.enqueue(args.pop("type"), args.pop("payload"), queue=queue, **args)
    assert (await client.depth(queue))["pending"] == 0


@LIVE
@given(job_id=st.text(min_size=1, max_size=MAX_ID_LENGTH + 20) | st.text(max_size=20).map(lambda s: "{" + s))
async def test_enqueue_refuses_ids_that_could_not_round_trip(
    redis_server: RedisServer, client: Client, queue: str, job_id: str
) -> None:
    """Too long or starting with '{' (it would read as an envelope): ValueError, nothing written.

    The id rule may be stricter than that; whatever the client accepts must run under that id
    (the xfail tests below).
    """
    if len(job_id) > MAX_ID_LENGTH or job_id.startswith("{"):
        with pytest.raises(ValueError, match="job id must be"):
            await client.enqueue("t.echo", None, queue=queue, job_id=job_id)
        assert (await client.depth(queue))["pending"] == 0
        return
    try:
        assert await client.enqueue("t.echo", None, queue=queue, job_id=job_id) == job_id
    except ValueError as exc:
        assert "job id must be" in str(exc)
        assert (await client.depth(queue))["pending"] == 0
        return
    assert (await client.job(job_id, queue)).status is JobStatus.QUEUED
    async with aredis.Redis.from_url(redis_server.url) as r:
        await r.delete(keys.queue_keys(queue).pending, keys.queue_keys(queue).job(job_id))


# -- found by fuzzing: regression tests, and strict xfails for what is still open ------------------


async def _settle(client: Client, queue: str, sentinel: str) -> None:
    await client.wait(sentinel, timeout=30, queue=queue)

    async def idle() -> bool:
        depth = await client.depth(queue)
        return depth["pending"] == depth["active"] == 0

    await eventually(idle, what="the queue drained")


async def _status(client: Client, job_id: str, queue: str) -> JobStatus | None:
    try:
        return (await client.job(job_id, queue)).status
    except JobNotFoundError:
        return None


async def test_non_finite_enqueued_at_does_not_break_reading_dead_letters(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    """Found here: cjson reads NaN and 1e999, the record said 'nan'/'inf', and every Client read
    of it (``botrix dead list`` for the whole queue) failed on int(float(...))."""
    async with aredis.Redis.from_url(redis_server.url) as r:
        await r.rpush(
            keys.queue_keys(queue).pending,
            b'{"type":"t.echo","enqueued_at":NaN}',
            b'{"type":"t.echo","enqueued_at":1e999}',
            b'{"id":"huge-at","type":"t.echo","enqueued_at":1e300}',
            b'{"id":"sentinel","type":"t.echo"}',
        )
    async with running_worker(redis_server.url, queue):
        await _settle(client, queue, "sentinel")
    dead = await client.dead(queue)
    assert len(dead) == 2
    assert all(d.enqueued_at_ms is None or isinstance(d.enqueued_at_ms, int) for d in dead)
    huge = await client.job("huge-at", queue)
    assert huge.status is JobStatus.COMPLETED and isinstance(huge.enqueued_at_ms, int)


async def test_an_id_the_client_accepts_runs(redis_server: RedisServer, client: Client, queue: str) -> None:
    """Found here: validate_job_id counted characters and the claim script bytes, so 150 'é' (300
    bytes) was accepted, its record stayed 'queued' forever with nothing pending, and the bare id
    was dead-lettered under a new id as 'not valid JSON'."""
    job_id = "\u00e9" * 150
    try:
        await client.enqueue("t.echo", 1, queue=queue, job_id=job_id)
    except ValueError:
        return  # refusing it at the door is consistent too
    await client.enqueue("t.echo", 2, queue=queue, job_id="sentinel")
    async with running_worker(redis_server.url, queue):
        await _settle(client, queue, "sentinel")
        status = await _status(client, job_id, queue)
        assert status is not JobStatus.QUEUED, "stuck: queued, with nothing on the pending list"
        assert (await client.wait(job_id, timeout=30)).status is JobStatus.COMPLETED
    assert await client.dead(queue) == []


NESTED = b"[" * 1010 + b"]" * 1010


@pytest.mark.parametrize(
    "envelope",
    [
        ('{"id":"%s","type":"t.echo"}' % ("\u00e9" * 150)).encode(),
        ('{"id":"%s","type":"t.echo"}' % ("a" * MAX_ID_LENGTH)).encode(),
        ('{"id":"%s","type":"t.echo"}' % ("a" * (MAX_ID_LENGTH + 1))).encode(),
        b'{"id":"order 7","type":"t.echo"}',
        b'{"id":"{x","type":"t.echo"}',
        b'{"id":"","type":"t.echo"}',
        b'{"id":"deep-1","type":"t.ignore","payload":' + NESTED + b"}",
    ],
    ids=[
        "150-char-300-byte-id",
        "200-char-id",
        "201-char-id",
        "id-with-space",
        "id-with-brace",
        "empty-id",
        "payload-1010-deep",
    ],
)
async def test_worker_and_protocol_agree_on_foreign_envelope_ids(
    redis_server: RedisServer, client: Client, queue: str, envelope: bytes
) -> None:
    """An RPUSHed envelope runs under its own id exactly when the client would accept that id (and
    the envelope is valid); otherwise it is dead-lettered with a reason naming the id."""
    job_id = orjson.loads(envelope)["id"]
    should_run = usable_id(job_id) and isinstance(parse(envelope, job_id), Job)
    async with aredis.Redis.from_url(redis_server.url) as r:
        await r.rpush(keys.queue_keys(queue).pending, envelope, b'{"id":"sentinel","type":"t.echo"}')
    async with running_worker(redis_server.url, queue):
        await _settle(client, queue, "sentinel")
    dead = await client.dead(queue)
    if should_run:
        assert await _status(client, job_id, queue) is JobStatus.COMPLETED, [d.error for d in dead]
        assert dead == []
    else:
        assert len(dead) == 1 and dead[0].error is not None and "'id'" in dead[0].error["message"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"type": ""},
        {"type": "t" * (MAX_TYPE_LENGTH + 1)},
        {"type": "t.echo", "max_retries": 5000},
        {"type": "t.echo", "max_retries": -1},
        {"type": "t.echo", "timeout": 0},
        {"type": "t.echo", "timeout": -1.5},
        {"type": "t.echo", "correlation_id": ""},
    ],
    ids=[
        "empty-type",
        "long-type",
        "max-retries-5000",
        "max-retries-negative",
        "timeout-0",
        "timeout-negative",
        "empty-correlation-id",
    ],
)
async def test_client_refuses_what_every_worker_would_dead_letter(
    client: Client, queue: str, kwargs: dict[str, Any]
) -> None:
    try:
        job_id = await client.enqueue(queue=queue, **kwargs)
    except ValueError:
        return
    envelope = (await client.job(job_id, queue)).envelope.encode()
    assert isinstance(parse(envelope, job_id), Job), f"accepted {kwargs}, which no worker will run"


async def test_a_job_type_never_imports_anything(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    """A type is looked up among registered handlers, never imported: module paths are just unknown."""
    # Canaries: harmless standard modules nothing in the suite imports.
    types = ["this", "tabnanny", "tabnanny:check", "os.system", "__import__('this')"]
    assert "this" not in sys.modules and "tabnanny" not in sys.modules
    async with aredis.Redis.from_url(redis_server.url) as r:
        await r.rpush(
            keys.queue_keys(queue).pending, *(orjson.dumps({"type": t, "payload": "x"}) for t in types)
        )
    await client.enqueue("t.echo", None, queue=queue, job_id="sentinel")
    async with running_worker(redis_server.url, queue):
        await _settle(client, queue, "sentinel")
    dead = await client.dead(queue)
    assert sorted(d.type or "" for d in dead) == sorted(types)
    assert {d.error["type"] for d in dead if d.error} == {"UnknownJobType"}
    assert "this" not in sys.modules and "tabnanny" not in sys.modules
