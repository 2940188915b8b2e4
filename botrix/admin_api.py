"""The HTTP admin API on the probe port: queue stats, dead letters, pause, rate limits, jobs.

The same operations as the ``botrix`` CLI and ``Client`` (through a Client on the worker's own
store), for services and dashboards that speak HTTP rather than Redis, as the BullMQ worker
this project came from exposed them. It can retry, purge and pause, and it shows payloads, so
it is off unless ``--admin-token`` is set, and every request must carry that token
(``Authorization: Bearer ...``, compared in constant time); the probes stay open. A mutation
is logged (``admin.request``: method, path, status), never the token.

    GET    /queues                          every known queue: depth, paused, rate limit
    GET    /queues/{q}                      one queue, and how many live workers serve it
    GET    /queues/{q}/dead?limit=50        dead jobs, newest first (and &offset=N)
    GET    /queues/{q}/jobs?state=queued    queued, scheduled, running or dead jobs, in the order
                                            they will move (&limit=50&offset=0)
    POST   /queues/{q}/dead/retry           {"ids": [...]} or {"all": true}
    POST   /queues/{q}/dead/purge           {"ids": [...]} or {"all": true}
    POST   /queues/{q}/pause | /resume
    GET    /queues/{q}/rate-limit
    PUT    /queues/{q}/rate-limit           {"max": N, "per_s": seconds} (as GET shows it)
    DELETE /queues/{q}/rate-limit
    POST   /queues/{q}/jobs                 {"type": T, "payload": ..., optional "id", "delay_s",
                                            "max_retries", "timeout_s", "correlation_id"}
    GET    /jobs/{id}?queue=Q               a job's record (ids percent-encoded: a / is %2F)
    POST   /jobs/{id}/cancel?queue=Q        cancel it (queue default "default"); 409 if finished
    GET    /workers?queue=Q                 live workers' health records

The BullMQ worker's own paths answer too, so its operators' scripts keep working:
``GET /queues/{q}/stats`` and ``/failed``, ``POST /queues/{q}/retry/{id}`` and
``/retry-failed``. HEAD is answered wherever GET is.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qs, unquote

import orjson

from botrix.client import CANCEL_STATES, LISTED_STATES, MAX_LISTED, MAX_OFFSET, Client
from botrix.errors import JobNotFoundError, PayloadTooLargeError
from botrix.health import serving
from botrix.logs import Logger
from botrix.model import validate_job_id, validate_queue_name
from botrix.store import ForeignWrite, Store, StoreUnavailable

#: What an admin endpoint answers: status, a JSON-ready body, extra headers.
Answer = tuple[int, Any, tuple[tuple[str, str], ...]]
Handler = Callable[[dict[str, str], dict[str, list[str]], Any], Awaitable[Any]]

#: The fields of an enqueue's body, and the Client.enqueue argument each one is.
ENQUEUE_FIELDS = {
    "type": "type",
    "payload": "payload",
    "id": "job_id",
    "delay_s": "delay",
    "max_retries": "max_retries",
    "timeout_s": "timeout",
    "correlation_id": "correlation_id",
    "once": "once",
}
#: The most one admin request may take once read: the probes share the port's connection slots.
ANSWER_TIMEOUT_S = 10.0


class BadRequest(ValueError):
    """The request cannot be served as sent: answered 400 with the reason."""


class Finished(Exception):
    """A cancel came after the job's end: answered 409, nothing changed."""


class AdminApi:
    """Routes admin requests to the client; built by the HTTP server when a token is set.

    Its paths start with http.ADMIN_PATHS.
    """

    def __init__(self, store: Store, token: str, log: Logger, max_payload_bytes: int) -> None:
        self._client = Client(store, max_payload_bytes=max_payload_bytes)
        self._token = token.encode()
        self._log = log
        q = "{queue}"
        self._routes: dict[tuple[str, tuple[str, ...]], Handler] = {
            ("GET", ("queues",)): self._queues,
            ("GET", ("queues", q)): self._queue,
            ("GET", ("queues", q, "dead")): self._dead,
            ("POST", ("queues", q, "dead", "retry")): self._retry,
            ("POST", ("queues", q, "dead", "purge")): self._purge,
            ("POST", ("queues", q, "cancel")): self._cancel_all,
            ("POST", ("queues", q, "pause")): self._pause,
            ("POST", ("queues", q, "resume")): self._resume,
            ("GET", ("queues", q, "rate-limit")): self._rate_limit,
            ("PUT", ("queues", q, "rate-limit")): self._set_rate_limit,
            ("DELETE", ("queues", q, "rate-limit")): self._clear_rate_limit,
            ("POST", ("queues", q, "jobs")): self._enqueue,
            ("GET", ("queues", q, "jobs")): self._jobs,
            ("GET", ("jobs", "{job_id}")): self._job,
            ("POST", ("jobs", "{job_id}", "cancel")): self._cancel,
            ("GET", ("workers",)): self._workers,
            # The BullMQ worker's paths (its README's API reference), for scripts written for it.
            ("GET", ("queues", q, "stats")): self._queue,
            ("GET", ("queues", q, "failed")): self._dead,
            ("POST", ("queues", q, "retry", "{job_id}")): self._retry_one,
            ("POST", ("queues", q, "retry-failed")): self._retry_all,
        }

    async def answer(self, method: str, target: str, authorization: bytes | None, body: bytes) -> Answer:
        """Authenticate, route and run one request; a change is logged, refused or not."""
        answer = await self._answer(method, target, authorization, body)
        if method not in ("GET", "HEAD"):
            path = target.partition("?")[0]
            self._log.info("admin.request", method=method, path=path[:200], status=answer[0])
        return answer

    async def _answer(self, method: str, target: str, authorization: bytes | None, body: bytes) -> Answer:
        path, _, query = target.partition("?")
        if not self.authorized(authorization):
            return _error(401, "unauthorized", "send Authorization: Bearer <token>", _CHALLENGE)
        segments = tuple(unquote(s) for s in path.strip("/").split("/"))
        found = self._route(method, segments)
        if isinstance(found, str):
            return _error(405, "method_not_allowed", path, (("Allow", found),))
        if found is None:
            return _error(404, "not_found", path)
        handler, params = found
        try:
            if "queue" in params:
                _check(validate_queue_name, params["queue"])
            if "job_id" in params:
                _check(validate_job_id, params["job_id"])
            async with asyncio.timeout(ANSWER_TIMEOUT_S):
                result = await handler(params, parse_qs(query), _body(body))
            answer: Answer = (200, result, ())
        except BadRequest as exc:
            answer = _error(400, "bad_request", str(exc))
        except JobNotFoundError as exc:
            answer = _error(404, "not_found", str(exc))
        except Finished as exc:
            answer = _error(409, "job_finished", str(exc))
        except PayloadTooLargeError as exc:
            answer = _error(413, "payload_too_large", str(exc))
        except ForeignWrite as exc:
            answer = _error(409, "queue_damaged", str(exc))
        except StoreUnavailable as exc:
            answer = _error(503, "redis_unavailable", str(exc))
        except TimeoutError:
            answer = _error(503, "timeout", f"Redis did not answer within {ANSWER_TIMEOUT_S:g} s")
        return answer

    def authorized(self, authorization: bytes | None) -> bool:
        """Whether the request carries the token (the HTTP server asks before reading a body)."""
        scheme, _, given = (authorization or b"").partition(b" ")
        # compare_digest on the bytes: the time taken does not tell how much of a guess matched.
        return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self._token)

    def _route(self, method: str, segments: tuple[str, ...]) -> tuple[Handler, dict[str, str]] | str | None:
        """The handler and the path's parameters; else the methods the path has, or None."""
        allowed = []
        for (verb, pattern), handler in self._routes.items():
            params = _match(pattern, segments)
            if params is None:
                continue
            if verb == method or (verb, method) == ("GET", "HEAD"):
                return handler, params
            allowed.append(verb)
        return ", ".join(allowed) or None

    # -- endpoints -------------------------------------------------------------------------

    async def _queues(self, params: dict[str, str], query: dict[str, list[str]], body: Any) -> Any:
        return await self._client.queues_overview()

    async def _queue(self, params: dict[str, str], query: dict[str, list[str]], body: Any) -> Any:
        queue = params["queue"]
        records = await self._client.workers(queue)
        return {"queue": queue, **await self._client.queue_info(queue), "workers": sum(map(serving, records))}

    async def _dead(self, params: dict[str, str], query: dict[str, list[str]], body: Any) -> Any:
        return await self._listed(params["queue"], "dead", query)

    async def _jobs(self, params: dict[str, str], query: dict[str, list[str]], body: Any) -> Any:
        state = _one(query, "state") or "queued"
        if state not in LISTED_STATES:
            raise BadRequest(f"'state' must be one of {', '.join(LISTED_STATES)}, got {state[:40]!r}")
        return await self._listed(params["queue"], state, query)

    async def _listed(self, queue: str, state: str, query: dict[str, list[str]]) -> Any:
        limit = _whole(_one(query, "limit") or "50", "limit", 1, MAX_LISTED)
        offset = _whole(_one(query, "offset") or "0", "offset", 0, MAX_OFFSET)
        return [info.to_dict() for info in await self._client.jobs(queue, state, start=offset, count=limit)]

    async def _retry(self, params: dict[str, str], query: dict[str, list[str]], body: Any) -> Any:
        return {"retried": await self._client.retry_dead(params["queue"], _ids(body))}

    async def _retry_one(self, params: dict[str, str], query: dict[str, list[str]], body: Any) -> Any:
        retried = await self._client.retry_dead(params["queue"], [params["job_id"]])
        if not retried:
            raise JobNotFoundError(f"no dead job {params['job_id']!r} in queue {params['queue']!r}")
        return {"retried": retried}

    async def _retry_all(self, params: dict[str, str], query: dict[str, list[str]], body: Any) -> Any:
        return {"retried": await self._client.retry_dead(params["queue"], None)}

    async def _purge(self, params: dict[str, str], query: dict[str, list[str]], body: Any) -> Any:
        return {"purged": await self._client.purge_dead(params["queue"], _ids(body))}

    async def _cancel_all(self, params: dict[str, str], query: dict[str, list[str]], body: Any) -> Any:
        state = _one(query, "state") or "queued"
        if state not in CANCEL_STATES:
            raise BadRequest(f"'state' must be one of {', '.join(CANCEL_STATES)}, got {state[:40]!r}")
        cancelled = await self._client.cancel_all(params["queue"], state)
        return {"queue": params["queue"], "state": state, "cancelled": cancelled}

    async def _pause(self, params: dict[str, str], query: dict[str, list[str]], body: Any) -> Any:
        await self._client.pause(params["queue"])
        return {"queue": params["queue"], "paused": True}

    async def _resume(self, params: dict[str, str], query: dict[str, list[str]], body: Any) -> Any:
        await self._client.resume(params["queue"])
        return {"queue": params["queue"], "paused": False}

    async def _rate_limit(self, params: dict[str, str], query: dict[str, list[str]], body: Any) -> Any:
        limit = await self._client.rate_limit(params["queue"])
        return {"queue": params["queue"], "rate_limit": None if limit is None else limit.to_dict()}

    async def _set_rate_limit(self, params: dict[str, str], query: dict[str, list[str]], body: Any) -> Any:
        if not isinstance(body, dict) or set(body) - {"used"} != {"max", "per_s"}:
            raise BadRequest('the body must be {"max": N, "per_s": seconds}')
        try:
            limit = await self._client.set_rate_limit(params["queue"], body["max"], body["per_s"])
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        return {"queue": params["queue"], "rate_limit": limit.to_dict()}

    async def _clear_rate_limit(self, params: dict[str, str], query: dict[str, list[str]], body: Any) -> Any:
        await self._client.clear_rate_limit(params["queue"])
        return {"queue": params["queue"], "rate_limit": None}

    async def _enqueue(self, params: dict[str, str], query: dict[str, list[str]], body: Any) -> Any:
        if not isinstance(body, dict) or "type" not in body or not set(body) <= set(ENQUEUE_FIELDS):
            raise BadRequest(
                f"the body must be a JSON object with 'type', and any of {sorted(ENQUEUE_FIELDS)}"
            )
        for name in ("type", "id", "correlation_id"):
            _typed(body, name, "a string", str)
        for name in ("delay_s", "timeout_s"):
            _typed(body, name, "a number", int, float)
        _typed(body, "max_retries", "a whole number", int)
        if body.get("once") is not None and not isinstance(body["once"], bool):
            raise BadRequest(f"'once' must be true or false, got {str(body['once'])[:40]!r}")
        if (body.get("delay_s") or 0) < 0:  # null is "not given", as for the other fields
            raise BadRequest(f"'delay_s' must not be negative, got {body['delay_s']!r}")
        arguments = {ENQUEUE_FIELDS[name]: value for name, value in body.items() if value is not None}
        try:
            job_id = await self._client.enqueue(queue=params["queue"], **arguments)
        except ValueError as exc:  # what every worker would dead-letter, said here instead
            raise BadRequest(str(exc)) from None
        return {"id": job_id, "queue": params["queue"]}

    async def _job(self, params: dict[str, str], query: dict[str, list[str]], body: Any) -> Any:
        queue = _one(query, "queue")
        if queue is not None:
            _check(validate_queue_name, queue)
        return (await self._client.job(params["job_id"], queue)).to_dict()

    async def _cancel(self, params: dict[str, str], query: dict[str, list[str]], body: Any) -> Any:
        queue = _one(query, "queue") or "default"
        _check(validate_queue_name, queue)
        was = await self._client.cancel(params["job_id"], queue)
        if was.finished:
            raise Finished(f"job {params['job_id']!r} in queue {queue!r} had already finished: {was}")
        return {"id": params["job_id"], "queue": queue, "was": was, "cancelled": True}

    async def _workers(self, params: dict[str, str], query: dict[str, list[str]], body: Any) -> Any:
        queue = _one(query, "queue")
        if queue is not None:
            _check(validate_queue_name, queue)
        return await self._client.workers(queue)


_CHALLENGE = (("WWW-Authenticate", 'Bearer realm="botrix"'),)


def _error(status: int, error: str, detail: str, headers: tuple[tuple[str, str], ...] = ()) -> Answer:
    return status, {"error": error, "detail": detail}, headers


def _match(pattern: tuple[str, ...], segments: tuple[str, ...]) -> dict[str, str] | None:
    """The path's parameters if ``segments`` fit ``pattern`` (checked as the CLI checks them)."""
    if len(pattern) != len(segments):
        return None
    params: dict[str, str] = {}
    for expected, given in zip(pattern, segments, strict=True):
        if expected == "{queue}":
            params["queue"] = given
        elif expected == "{job_id}":
            params["job_id"] = given
        elif expected != given:
            return None
    return params


def _check(validate: Callable[[str], None], value: str) -> None:
    try:
        validate(value)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def _one(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    if values is not None and len(values) != 1:
        raise BadRequest(f"give '{name}' once")
    return values[0] if values else None


def _whole(text: str, name: str, low: int, high: int) -> int:
    if not (text.isascii() and text.isdigit() and low <= int(text) <= high):
        raise BadRequest(f"'{name}' must be a whole number from {low} to {high}, got {text[:40]!r}")
    return int(text)


def _body(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None


def _typed(body: dict[str, Any], name: str, expected: str, *types: type) -> None:
    """``body[name]``, if given and not null, is of one of ``types`` (a JSON true is no number)."""
    value = body.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, types)):
        raise BadRequest(f"'{name}' must be {expected}, got {str(value)[:40]!r}")


def _ids(body: Any) -> list[str] | None:
    """The dead jobs a retry or purge names: ids, or every one with {"all": true}."""
    if isinstance(body, dict) and set(body) == {"all"} and body["all"] is True:
        return None
    ids = body.get("ids") if isinstance(body, dict) and set(body) == {"ids"} else None
    if not (isinstance(ids, list) and ids and all(isinstance(i, str) for i in ids)):
        raise BadRequest('the body must be {"ids": ["ID", ...]} or {"all": true}')
    for job_id in ids:
        _check(validate_job_id, job_id)
    return ids
