"""``botrix``: enqueue jobs, inspect them, manage dead letters, list workers.

Output is JSON (one document, or one line per item) so scripts and operators read the same
thing. Exit codes: 0 ok, 1 the answer is "no" (job failed, no worker serves the queue, job not
found), 2 bad usage, 3 Redis unreachable or refusing (a wrong password, an ACL without a
command).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import uvloop

from botrix.cli.argv import Parser, fail, hide_secrets_in_title
from botrix.client import CANCEL_STATES, LISTED_STATES, MAX_OFFSET, Client
from botrix.config import OPTIONS, check_cluster_nodes, from_env
from botrix.errors import ConfigError, JobNotFoundError, PayloadTooLargeError
from botrix.health import serving
from botrix.model import (
    MAX_DELAY_S,
    MAX_RETRIES,
    MAX_TYPE_LENGTH,
    RATE_MAX_LIMIT,
    RATE_PER_RANGE_S,
    validate_job_id,
    validate_queue_name,
)
from botrix.redis_url import REDIS_PARTS, redact_url, redis_url_from_parts
from botrix.store import ForeignWrite, StoreUnavailable

PROG = "botrix"


def _print(value: Any) -> None:
    try:
        text = orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
    except TypeError:  # a payload nested deeper than orjson writes (254), or an integer over 64 bits
        text = json.dumps(value, indent=2, ensure_ascii=False)
    sys.stdout.write(text + "\n")


def _redis_url(args: argparse.Namespace) -> str:
    option = next(o for o in OPTIONS if o.name == "redis_url")
    source, raw = "--redis-url", args.redis_url  # given empty, it is refused, not skipped
    if raw is None:
        source, raw = next(((e, os.environ[e]) for e in option.envs if os.environ.get(e)), ("", None))
    if raw is None:
        source, raw = "/".join(REDIS_PARTS), redis_url_from_parts(os.environ)
    if raw is None:
        source, raw = "", option.default or ""
    try:
        return str(option.parse(raw))
    except ValueError as exc:
        raise ConfigError(f"{source or 'redis URL'}: {exc}") from None


def _worker_option(name: str, given: str | None) -> tuple[str, Any]:
    """A worker option as the worker reads it (the flag, else its environment), and its source."""
    option = next(o for o in OPTIONS if o.name == name)
    source, raw = option.flag, given
    if raw is None:
        source, raw = from_env(option, os.environ)
    try:
        return source, option.parse(raw or option.default or "")
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _client(args: argparse.Namespace) -> Client:
    _, cluster = _worker_option("redis_cluster", args.redis_cluster)
    source, nodes = _worker_option("redis_cluster_nodes", args.redis_cluster_nodes)
    check_cluster_nodes(cluster, nodes, source)
    return Client.from_url(_redis_url(args), cluster=cluster, cluster_nodes=nodes)


def _seconds(text: str) -> float:
    try:
        value = float(text) if text.strip().isascii() else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or value > MAX_DELAY_S:
        raise argparse.ArgumentTypeError(
            f"must be a finite number of seconds >= 0, at most {MAX_DELAY_S:.0f}, got {text!r}"
        )
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return value


def _window(text: str) -> float:
    low, high = RATE_PER_RANGE_S
    try:
        value = float(text) if text.strip().isascii() else math.nan
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and low <= value <= high):
        raise argparse.ArgumentTypeError(f"must be from {low:g} to {high:g} seconds, got {text!r:.60}")
    return value


def _whole(minimum: int, maximum: int = 1_000_000) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text) if text.strip().isascii() else minimum - 1
        except ValueError:
            value = minimum - 1
        if not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(
                f"must be a whole number from {minimum} to {maximum}, got {text!r:.60}"
            )
        return value

    return parse


def _utf8(text: str) -> None:
    try:
        text.encode()
    except UnicodeEncodeError:  # bytes the terminal's encoding could not decode
        raise ValueError(f"must be UTF-8 text, got {text!r:.60}") from None


def _job_type(text: str) -> None:
    _utf8(text)
    if not 1 <= len(text) <= MAX_TYPE_LENGTH:
        raise ValueError(f"must be a handler's name, 1 to {MAX_TYPE_LENGTH} characters, got {len(text)}")


def _checked(validate: Callable[[str], None]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        try:
            validate(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text

    return parse


def _add_cancel(sub: Any) -> None:
    cancel = sub.add_parser(
        "cancel",
        help="cancel a job (or --all of a queue's in --state): it will not run, or its worker stops it; "
        "exit 1 if the job had finished",
    )
    cancel.add_argument("id", nargs="?", type=_checked(validate_job_id))
    cancel.add_argument("--queue", type=_checked(validate_queue_name), default="default")
    cancel.add_argument(
        "--all", action="store_true", help="cancel every job of the queue in --state (instead of an id)"
    )
    cancel.add_argument("--state", choices=CANCEL_STATES, help="with --all: which jobs [default queued]")


def _connection_flags(parser: argparse.ArgumentParser, default: Any = None) -> None:
    parser.add_argument("--redis-url", default=default, help="Redis URL [env BOTRIX_REDIS_URL or REDIS_URL]")
    parser.add_argument(
        "--redis-cluster",
        default=default,
        metavar="on|off",
        help="the URL names a node of a Redis Cluster [env BOTRIX_REDIS_CLUSTER or REDIS_CLUSTER_ENABLED]",
    )
    parser.add_argument(
        "--redis-cluster-nodes",
        default=default,
        metavar="HOST:PORT,...",
        help="more nodes of that cluster to try [env BOTRIX_REDIS_CLUSTER_NODES or REDIS_CLUSTER_NODES]",
    )


def build_parser() -> Parser:
    """The admin CLI's subcommands."""
    parser = Parser(prog=PROG, description="Enqueue and inspect botrix jobs.")
    _connection_flags(parser)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    enqueue = sub.add_parser("enqueue", help="queue a job and print its id")
    enqueue.add_argument("type", type=_checked(_job_type), help="the handler's name")
    enqueue.add_argument("--payload", default="null", help="JSON payload")
    enqueue.add_argument("--queue", type=_checked(validate_queue_name), default="default")
    enqueue.add_argument("--delay", type=_seconds, default=0.0, help="seconds before it may start")
    enqueue.add_argument("--max-retries", type=_whole(0, MAX_RETRIES))
    enqueue.add_argument("--timeout", type=_positive_seconds, help="per-attempt timeout in seconds")
    enqueue.add_argument(
        "--job-id", type=_checked(validate_job_id), help="your own id (makes the enqueue idempotent)"
    )
    enqueue.add_argument(
        "--once",
        action="store_true",
        help="do nothing while any job with --job-id is on record, a finished one included",
    )
    enqueue.add_argument("--wait", action="store_true", help="wait for the job and print it")
    enqueue.add_argument("--wait-timeout", type=_seconds, default=60.0)

    job = sub.add_parser("job", help="print a job's state, result and error")
    job.add_argument("id", type=_checked(validate_job_id))
    job.add_argument("--queue", type=_checked(validate_queue_name))

    _add_cancel(sub)

    wait = sub.add_parser("wait", help="wait until a job is completed, dead or cancelled")
    wait.add_argument("id", type=_checked(validate_job_id))
    wait.add_argument("--queue", type=_checked(validate_queue_name))
    wait.add_argument("--timeout", type=_seconds, default=60.0)

    dead = sub.add_parser("dead", help="dead letters: list, retry or purge")
    dead.add_argument("action", choices=["list", "retry", "purge"])
    dead.add_argument("ids", nargs="*", type=_checked(validate_job_id), help="job ids (retry/purge)")
    dead.add_argument(
        "--all", action="store_true", help="retry/purge every dead job of the queue (instead of ids)"
    )
    dead.add_argument("--queue", type=_checked(validate_queue_name), default="default")
    dead.add_argument("--limit", type=_whole(1), default=50)

    jobs = sub.add_parser(
        "jobs", help="list a queue's queued, scheduled, running or dead jobs, in the order they will move"
    )
    jobs.add_argument("--queue", type=_checked(validate_queue_name), default="default")
    jobs.add_argument("--state", choices=list(LISTED_STATES), default="queued")
    jobs.add_argument("--limit", type=_whole(1), default=50, help="at most this many")
    jobs.add_argument("--offset", type=_whole(0, MAX_OFFSET), default=0, help="skip this many first")

    workers = sub.add_parser(
        "workers", help="list live workers; exit 1 when none (but draining ones) serves --queue"
    )
    workers.add_argument("--queue", type=_checked(validate_queue_name))

    queues = sub.add_parser(
        "queues", help="depth of every known queue by state, whether it is paused, and its rate limit"
    )
    queues.add_argument("--queue", type=_checked(validate_queue_name), action="append")

    for name, what in (("pause", "stop workers claiming from a queue"), ("resume", "let them claim again")):
        toggle = sub.add_parser(name, help=what)
        toggle.add_argument("--queue", type=_checked(validate_queue_name), default="default")

    limit = sub.add_parser(
        "limit", help="show, set (--max N --per S) or lift (--off) a queue's rate limit, fleet-wide"
    )
    limit.add_argument("--queue", type=_checked(validate_queue_name), default="default")
    limit.add_argument("--max", type=_whole(1, RATE_MAX_LIMIT), help="jobs that may start per window")
    limit.add_argument("--per", type=_window, help="the window in seconds")
    limit.add_argument("--off", action="store_true", help="lift the limit")

    # The connection's flags go after the command too (`botrix queues --redis-url URL`), as
    # they are often typed; there they default to nothing, so that one given before it stands.
    for command in sub.choices.values():
        _connection_flags(command, default=argparse.SUPPRESS)
    sub.add_parser("worker", help="run the worker daemon (same flags as botrix-worker)", add_help=False)
    return parser


async def _enqueue(client: Client, args: argparse.Namespace) -> int:
    try:
        payload = orjson.loads(args.payload)
    except orjson.JSONDecodeError as exc:
        fail(PROG, f"--payload is not valid JSON: {exc}")
    # The id is chosen here, not by the client, so that every error below can name it: Redis
    # may have run an enqueue whose reply was lost, and without the id the user could only
    # enqueue the job again, a second time if it was.
    job_id = args.job_id or uuid.uuid4().hex
    where = f"job {job_id!r} in queue {args.queue!r}"
    redis = f"Redis at {redact_url(_redis_url(args))}"
    try:
        await client.enqueue(
            args.type,
            payload,
            queue=args.queue,
            delay=args.delay,
            max_retries=args.max_retries,
            timeout=args.timeout,
            job_id=job_id,
            once=args.once,
        )
    except ForeignWrite:
        raise  # refused before any write: main() names the damaged key
    except StoreUnavailable as exc:
        fail(
            PROG,
            f"{redis} is unreachable or refused ({exc}); {where} may or may not be enqueued: "
            f"'botrix job {job_id} --queue {args.queue}' tells, and enqueueing again with "
            f"--job-id {job_id} --once does nothing if it is",
            3,
        )
    await _warn_if_unserved(client, args.queue)
    if not args.wait:
        _print({"id": job_id, "queue": args.queue})
        return 0
    try:
        info = await client.wait(job_id, args.wait_timeout, args.queue)
    except TimeoutError:
        # The job is queued: without its id the user could only enqueue it again.
        fail(PROG, f"timed out waiting for {where} (it is still enqueued)", 1)
    except ForeignWrite:
        raise
    except StoreUnavailable as exc:
        fail(PROG, f"{where} was enqueued, but waiting for it failed: {redis} is unreachable ({exc})", 3)
    _print(info.to_dict())
    return 0 if info.status == "completed" else 1


async def _warn_if_unserved(client: Client, queue: str) -> None:
    """A job enqueued where no worker takes jobs waits until one does: say so, once."""
    try:
        if any(map(serving, await client.workers(queue))):
            return
    except StoreUnavailable:
        return  # the job is in; whether anyone serves the queue is for `botrix workers`
    print(
        f"{PROG}: warning: no live worker serves queue {queue!r}: the job waits until one does "
        f"(botrix workers --queue {queue})",
        file=sys.stderr,
    )


async def _dead(client: Client, args: argparse.Namespace) -> int:
    if args.action == "list":
        _print([info.to_dict() for info in await client.dead(args.queue, count=args.limit)])
    elif args.action == "retry":
        _print({"retried": await client.retry_dead(args.queue, None if args.all else args.ids)})
    else:
        _print({"purged": await client.purge_dead(args.queue, None if args.all else args.ids)})
    return 0


async def _run(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        if args.command == "enqueue":
            return await _enqueue(client, args)
        if args.command == "job":
            _print((await client.job(args.id, args.queue)).to_dict())
            return 0
        if args.command == "cancel" and args.all:
            state = args.state or "queued"
            cancelled = await client.cancel_all(args.queue, state)
            _print({"queue": args.queue, "state": state, "cancelled": cancelled})
            return 0
        if args.command == "cancel":
            was = await client.cancel(args.id, args.queue)
            _print({"id": args.id, "queue": args.queue, "was": was, "cancelled": not was.finished})
            return 1 if was.finished else 0
        if args.command == "wait":
            info = await client.wait(args.id, args.timeout, args.queue)
            _print(info.to_dict())
            return 0 if info.status == "completed" else 1
        if args.command == "dead":
            return await _dead(client, args)
        if args.command == "jobs":
            infos = await client.jobs(args.queue, args.state, start=args.offset, count=args.limit)
            _print([info.to_dict() for info in infos])
            return 0
        if args.command == "workers":
            records = await client.workers(args.queue)
            _print(records)
            return 0 if any(serving(r) for r in records) else 1  # a draining one is listed, not counted
        if args.command in ("pause", "resume"):
            await (client.pause if args.command == "pause" else client.resume)(args.queue)
            _print({"queue": args.queue, "paused": await client.is_paused(args.queue)})
            return 0
        if args.command == "limit":
            if args.off:
                await client.clear_rate_limit(args.queue)
            elif args.max is not None:
                await client.set_rate_limit(args.queue, args.max, args.per)
            limit = await client.rate_limit(args.queue)
            _print({"queue": args.queue, "rate_limit": None if limit is None else limit.to_dict()})
            return 0
        _print(await client.queues_overview(args.queue or ()))
        return 0


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``botrix``."""
    hide_secrets_in_title()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["worker"]:
        from botrix.cli.start import worker

        worker(argv[1:])
        return
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command == "worker":  # only reached with an option before it
        fail(PROG, "'worker' takes its own flags: botrix worker --redis-url URL --app MODULE ...")
    if args.command == "dead":
        # argparse settles the ids before it reads the options, so `dead retry --queue q ID`
        # (the runbook's order) leaves ID over: it is an id all the same.
        ids = [u for u in unknown if not u.startswith("-")]
        unknown = [u for u in unknown if u.startswith("-")]
        for job_id in ids:
            try:
                validate_job_id(job_id)
            except ValueError as exc:
                parser.error(f"argument ids: {exc}")
        args.ids += ids
        if args.action == "list" and (args.ids or args.all):
            parser.error("'dead list' takes no ids: see 'botrix job ID'")
        # Explicit, both ways: `dead purge $(some filter)` that matched nothing must not purge all.
        if args.action != "list" and bool(args.ids) == args.all:
            parser.error(f"'dead {args.action}' takes job ids, or --all for every dead job (not both)")
    if args.command == "cancel" and (args.id is None) != args.all:
        parser.error("'cancel' takes a job id, or --all for every job of the queue in --state (not both)")
    if args.command == "cancel" and args.state and not args.all:
        parser.error("'cancel --state' goes with --all")
    if args.command == "limit" and (
        (args.max is None) != (args.per is None) or (args.off and args.max is not None)
    ):
        parser.error("'limit' takes --max N --per SECONDS together, or --off, or neither (to show it)")
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        code = uvloop.run(_run(args))
    except ConfigError as exc:
        fail(PROG, str(exc))
    except (JobNotFoundError, PayloadTooLargeError, ValueError) as exc:
        fail(PROG, str(exc), 1)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except TimeoutError:
        fail(PROG, "timed out waiting for the job", 1)
    except ForeignWrite as exc:
        fail(
            PROG,
            f"a botrix key holds a type botrix never writes ({exc}): see 'A key of the wrong type' "
            "in docs/operations.md",
            3,
        )
    except StoreUnavailable as exc:
        fail(PROG, f"Redis at {redact_url(_redis_url(args))} is unreachable or refused: {exc}", 3)
    raise SystemExit(code)


if __name__ == "__main__":
    main()
