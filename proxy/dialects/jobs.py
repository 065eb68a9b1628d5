"""The serverless endpoint's async job API (seed 000), at the root and under `/v2/{endpoint_id}`:

    POST /run            {"input": {"prompt" | "messages", "max_tokens", "temperature", ..., "model"?}}
                         -> {"id", "status": "IN_QUEUE"}
    POST /runsync        the same, waiting for the end up to `jobs.runsync_wait_s` (or ?wait=ms)
    GET  /status/{id}    {"id", "status", "delayTime", "executionTime", "output" | "error", "workerId"}
    POST /cancel/{id}    {"id", "status"}

A job is a chat completion (a `prompt` is one user message) run through the core by the job
runner (proxy/jobs/), with the limits and usage of the key that queued it; only that key sees it
(any other gets 404). Under `/v2/{endpoint_id}` the endpoint names the model: an alias in
`keystile_settings.jobs.endpoints`, else a model name. Errors keep Keystile's envelope."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

from ..core import Gateway, check_caller
from ..db.models import Job
from ..domain import MASTER, Principal, Refusal
from ..durations import utcnow
from ..errors import BadRequest, Forbidden, NotFound, RateLimited, Unauthorized
from ..jobs.runner import JobRunner
from ..jobs.store import ENDED, QUEUED, JobStore
from ..protocol.openai import ChatRequest
from .base import Dialect, Endpoint, Incoming, Reply, default_model, parse_json

SAMPLING = ("max_tokens", "temperature", "top_p", "top_k", "min_p", "stop", "seed", "presence_penalty",
            "frequency_penalty", "repetition_penalty", "response_format")
DEFAULTS = {"max_tokens": 256, "temperature": 0.7}  # the guide's


class RunRequest(BaseModel):
    """`{"input": {...}}`: `prompt` or `messages`, OpenAI's sampling fields, `model` (optional)."""

    model_config = ConfigDict(extra="allow")

    input: dict[str, Any]


def owner_of(principal: Principal) -> str:
    if principal.is_master:
        return "master"
    if principal.key_hash:
        return f"key:{principal.key_hash}"
    return f"user:{principal.user_id}"


def _aware(t: datetime) -> datetime:
    """SQLite hands times back without their zone; they were written in UTC."""
    return t if t.tzinfo is not None else t.replace(tzinfo=timezone.utc)


def _ms(start: datetime | None, end: datetime | None) -> int | None:
    if start is None or end is None:
        return None
    return int((_aware(end) - _aware(start)).total_seconds() * 1000)


def render(job: Job) -> dict:
    """A job as /status shows it."""
    out: dict[str, Any] = {"id": job.id, "status": job.status}
    if (delay := _ms(job.created_at, job.started_at or (None if job.status == QUEUED else job.finished_at))) is not None:
        out["delayTime"] = delay
    if (execution := _ms(job.started_at, job.finished_at)) is not None:
        out["executionTime"] = execution
    if job.output is not None:
        out["output"] = job.output
    if job.error is not None:
        out["error"] = job.error
    if job.runner:
        out["workerId"] = job.runner
    return out


class Jobs(Dialect):
    name = "jobs"
    prefixes = ("", "/v2/{endpoint_id}")
    endpoints = (
        Endpoint("/run", None, RunRequest, "Queue a job; answers with its id"),
        Endpoint("/runsync", None, RunRequest, "Run a job, waiting for its end up to a timeout"),
        Endpoint("/status/{job_id}", None, None, "A job's state and result", method="GET"),
        Endpoint("/cancel/{job_id}", None, None, "Cancel a queued or running job"),
    )

    def __init__(self) -> None:
        self.store: JobStore | None = None
        self.runner: JobRunner | None = None
        self._principals: dict[str, Principal] = {}  # callers with no key to reload them by (JWTs)

    async def start(self, services) -> None:
        options = services.options
        self.settings = options.jobs
        self.cache = services.cache
        self.default_model = default_model(services)
        self.store = JobStore(services.db)
        self.runner = JobRunner(self.store, services.gateway, self._principal_of, self.settings)
        await self.runner.start()

    async def aclose(self) -> None:
        if self.runner is not None:
            await self.runner.aclose()

    async def _principal_of(self, job: Job) -> Principal:
        """The caller a job runs as, loaded again (a revoked or blocked key fails its jobs)."""
        if job.owner == "master":
            return MASTER
        if job.owner.startswith("key:"):
            found = await self.cache.get(job.owner[4:])
            if isinstance(found, Refusal):
                raise Forbidden(found.reason, code="key_blocked")
            if found is None:
                raise Unauthorized("the key that queued this job no longer exists")
            if found.expires is not None and found.expires <= utcnow():
                raise Unauthorized("the key that queued this job has expired", code="key_expired")
            return found
        principal = self._principals.pop(job.id, None)
        if principal is None:
            raise Unauthorized("this job's caller (a JWT) cannot be resumed after a gateway restart")
        return principal

    async def handle(self, gateway: Gateway, principal: Principal, endpoint: Endpoint, incoming: Incoming) -> Reply:
        assert self.store is not None and self.runner is not None, "Jobs.start was not called"
        check_caller(principal)
        if endpoint.method == "GET":
            return _json(render(await self._own(principal, incoming.params["job_id"])))
        if endpoint.path.startswith("/cancel"):
            job = await self._own(principal, incoming.params["job_id"])
            if await self.store.cancel(job.id):
                self.runner.cancel(job.id)
            job = await self._own(principal, job.id)
            return _json({"id": job.id, "status": job.status})
        try:
            job = self._job(gateway, principal, parse_json(await incoming.read_body()), incoming)
        except BaseException as exc:
            gateway.reject(principal, incoming.path, exc)
            raise
        if await self.store.queued(job.owner) >= self.settings.max_queued:
            raise RateLimited(f"this key has {self.settings.max_queued} jobs queued already", code="queue_full",
                              headers={"Retry-After": "5"})
        if job.owner.startswith("user:"):
            self._principals[job.id] = principal
        sync = endpoint.path == "/runsync"
        ended = self.runner.ended(job.id) if sync else None
        await self.store.add(job)
        self.runner.wake()
        if ended is None:
            return _json({"id": job.id, "status": QUEUED})
        deadline = asyncio.get_running_loop().time() + _wait_s(incoming.query, self.settings.runsync_wait_s)
        while True:  # the end is signalled when it happens here; another gateway's is polled for
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ended.wait(), max(0.0, min(1.0, deadline - asyncio.get_running_loop().time())))
            job = await self._own(principal, job.id)
            if job.status in ENDED:
                return _json(render(job))
            if asyncio.get_running_loop().time() >= deadline:
                return _json({"id": job.id, "status": job.status})

    def _job(self, gateway: Gateway, principal: Principal, body: dict, incoming: Incoming) -> Job:
        try:
            spec = RunRequest.model_validate(body).input
        except ValidationError as exc:
            first = exc.errors()[0]
            raise BadRequest("input: required, a JSON object with a prompt or messages"
                             if first["type"] == "missing" else f"input: {first['msg']}", param="input") from exc
        endpoint_id = incoming.params.get("endpoint_id")
        if endpoint_id is not None:
            requested = self.settings.endpoints.get(endpoint_id, endpoint_id)
        else:
            requested = spec.get("model") or self.default_model
        if not isinstance(requested, str) or not requested:
            raise BadRequest("input.model: a model name is required (no default model is configured)",
                             param="input.model")
        try:
            name = gateway.resolve_model(principal, requested)
        except NotFound:
            what = f"endpoint '{endpoint_id}'" if endpoint_id is not None else f"model '{requested}'"
            raise NotFound(f"{what} does not exist or is not served here") from None
        request = {"model": requested, "messages": _messages(spec)}
        request.update({k: spec.get(k, v) for k, v in DEFAULTS.items()})
        request.update({k: spec[k] for k in SAMPLING if k in spec and spec[k] is not None})
        try:
            ChatRequest.model_validate(request)
        except ValidationError as exc:
            first = exc.errors()[0]
            param = "input." + ".".join(str(p) for p in first["loc"])
            raise BadRequest(f"{param}: {first['msg']}", param=param) from exc
        return Job(id=str(uuid.uuid4()), owner=owner_of(principal), model=name, route=incoming.path[:64],
                   request=request, status=QUEUED, created_at=utcnow())

    async def _own(self, principal: Principal, job_id: str) -> Job:
        """The caller's own job; any other, or one that expired, is not found."""
        assert self.store is not None
        job = await self.store.get(job_id)
        if job is None or job.owner != owner_of(principal) or _expired(job, self.settings.keep_finished_s):
            raise NotFound(f"job '{job_id}' does not exist", param="id", code="job_not_found")
        return job


def _messages(spec: dict) -> list:
    messages, prompt = spec.get("messages"), spec.get("prompt")
    if messages is not None:
        return messages
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    raise BadRequest("input.prompt: required (a string), or input.messages", param="input.prompt")


def _expired(job: Job, keep_s: float) -> bool:
    return job.finished_at is not None and (utcnow() - _aware(job.finished_at)).total_seconds() > keep_s


def _wait_s(query: bytes, default: float) -> float:
    """/runsync?wait=<ms> (as the serverless API has it), at most an hour."""
    values = parse_qs(query.decode("latin-1")).get("wait")
    if not values:
        return default
    try:
        return min(3600.0, max(0.0, float(values[0]) / 1000))
    except ValueError:
        raise BadRequest("wait: milliseconds, a number", param="wait") from None


def _json(data: dict) -> Reply:
    return Reply(body=orjson.dumps(data))


DIALECT = Jobs
