"""The inference path every dialect shares, with plain values in and out:

    answer_or_stream = await gateway.call(principal, "chat", Inference(body, stream=..., route=...),
                                          disconnected=...)

caller check -> model (aliases, allowed models) -> limits and budgets (one atomic admission) ->
attempts on deployments (their own limits, retries, fallbacks) -> Answer, or a Stream of chunks.
However the call ends, one settlement: limits released with the real usage, one usage record
queued. A stream is settled when its iteration ends or is closed; a client that hangs up is billed
for what was generated."""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import anyio

from backends.base import Chunk, Usage, chunk_id
from backends.errors import BackendError
from backends.router import Deployment, Router

from ..accounting.prices import PriceMap
from ..accounting.writer import UsageWriter
from ..domain import LimitExceeded, Principal, UsageRecord
from ..errors import Forbidden, KeystileError, NotFound, as_keystile
from ..limits import Lease, Limiter, request_limits
from .attempts import Attempts, Started
from .cancel import WATCH_AFTER_S, Disconnected, Watch, unless_disconnected
from .cutoff import Cutoff
from .deadlines import Deadlines
from .estimates import MESSAGE_OVERHEAD, estimate_prompt_tokens, prompt_text, requested_completion_tokens, streamed_text
from .values import RELAYED, STREAMABLE, Answer, Inference, Operation, Stream

COUNT_TIMEOUT_S = 2.0
AFTER_ADMISSION = (BackendError, LimitExceeded)
"""Failures of an admitted call's attempts (a backend's, or every deployment at its own limit)."""


@dataclass(slots=True)
class Call:
    """One request's progress, from which its usage record is made."""

    principal: Principal
    route: str
    request_id: str
    started: float = field(default_factory=time.perf_counter)
    created_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    model: str = ""
    prompt_estimate: int = 0
    max_completion: int | None = None
    deployment: Deployment | None = None
    usage: Usage | None = None
    status: int = 200
    error_type: str | None = None
    ttft_ms: float | None = None
    streamed: bool = False
    finished: bool = False
    response_id: str | None = None
    # For the observers (proxy/observe): the body asked, the kind and scope type of the limit that
    # refused the call (rpm, key), if one did, and the spans that `on_admitted` started (traces).
    body: dict | None = None
    refused_by: tuple[str, str] | None = None
    spans: object = None

    def fail(self, exc: BaseException) -> None:
        """The call ended with `exc`: a client that went away is a 499, anything else the status
        and type of its error envelope."""
        if isinstance(exc, LimitExceeded):
            self.refused_by = (exc.kind, exc.scope_type)
        if isinstance(exc, Exception) and not isinstance(exc, Disconnected):
            err = as_keystile(exc)
            self.status, self.error_type = err.status, err.type
        else:
            self.status, self.error_type = 499, "client_disconnected"

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000


def _with_lease_headers(exc: Exception, lease: Lease) -> KeystileError:
    """A failure after admission answers with the same x-ratelimit-* headers as a success would."""
    err = as_keystile(exc)
    for name, value in lease.headers():
        err.headers.setdefault(name.decode(), value.decode())
    return err


def check_caller(principal: Principal) -> None:
    """Management keys may use the admin routes only."""
    if not principal.may_infer:
        raise Forbidden("this key is for management routes only", code="wrong_key_type")


class Gateway:
    def __init__(self, router: Router, limiter: Limiter, prices: PriceMap, usage: UsageWriter, *,
                 stream_keepalive: float = 0.0):
        """`stream_keepalive`: seconds a caller serving a stream over a connection that proxies may
        time out lets it wait for its first chunk before committing the answer with keep-alives
        (0: never; the core itself does not wait on it): `keepalives` are the deadlines of streams
        waiting (None for never). `watches`: when calls start watching their client (unless_disconnected)."""
        self.router = router
        self.keepalives = Deadlines(stream_keepalive) if stream_keepalive > 0 else None
        self.watches = Deadlines(WATCH_AFTER_S)
        self.limiter = limiter
        self.prices = prices
        self.usage = usage
        self.attempts = Attempts(router, limiter)
        # Told of every usage record with its call (metrics, traces, request logs: proxy/observe).
        self.observe: Callable[[UsageRecord, Call], None] | None = None
        # Told of each call as its admission ends, before any upstream is asked (traces start its
        # spans); it must not raise (the call's lease is not released then).
        self.on_admitted: Callable[[Call], None] | None = None
        self.calls_open = 0  # calls between their start and their usage record
        self.streams_open = 0  # of which streams that have started
        # Request ids: a random per-process prefix and a counter (unique without a syscall each).
        self._id_prefix = secrets.token_hex(8)
        self._ids = itertools.count()

    def new_request_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids):x}"

    def _call(self, principal: Principal, route: str, request_id: str = "") -> Call:
        self.calls_open += 1
        return Call(principal, route, request_id or self.new_request_id())

    def resolve_model(self, principal: Principal, requested: str) -> str:
        """The public model name `requested` stands for (a key's alias resolved), if it is served
        and this caller may use it."""
        name = principal.resolve(requested)
        if name not in self.router:
            raise NotFound(f"model '{requested}' does not exist or is not served here")
        if not principal.may_use(name):
            raise Forbidden(f"this key may not use model '{requested}'", code="model_not_allowed")
        return name

    def relays(self, principal: Principal, requested: str, wire: str) -> bool:
        """Whether every deployment a call for model `requested` may reach (its fallbacks included)
        takes requests in wire format `wire` as they are (a backend's `relays`), so a dialect may
        relay its body instead of translating it. False for a model this caller cannot use (the
        call itself then says why)."""
        try:
            name = self.resolve_model(principal, requested)
        except KeystileError:
            return False
        names = [name, *(n for n in self.router.policy.fallbacks.get(name, []) if n in self.router)]
        return all(wire in getattr(d.backend, "relays", ()) for n in names for d in self.router.group(n) or ())

    async def count_prompt(self, principal: Principal, body: dict) -> int:
        """The prompt tokens of an OpenAI-shaped chat body for the model it names (a token-count
        route; nothing is generated, limited or recorded): the tokenizer of the model's first
        deployment where it has one, else the estimate the limits use."""
        check_caller(principal)
        name = self.resolve_model(principal, str(body.get("model") or ""))
        text = prompt_text(body)
        group = self.router.group(name)
        try:
            if not group:
                raise NotFound(f"model '{name}' is no longer served")
            tokens = await asyncio.wait_for(group[0].backend.tokenize(text), COUNT_TIMEOUT_S)
        except (BackendError, asyncio.TimeoutError, NotFound):
            return estimate_prompt_tokens(body)
        return len(tokens) + MESSAGE_OVERHEAD * len(body.get("messages") or ())

    async def relay_count(self, principal: Principal, body: dict) -> bytes:
        """Anthropic's token count of a Messages body for a model whose deployments take Anthropic's
        format (`relays(..., "anthropic")`): the upstream's answer as it is (retries and fallbacks as
        for any call; like `count_prompt`, nothing is limited or recorded)."""
        check_caller(principal)
        name = self.resolve_model(principal, str(body.get("model") or ""))
        _, result = await self.attempts.call(name, "count_tokens", body, 0)
        return result.body

    def reject(self, principal: Principal, route: str, exc: BaseException, *, model: str = "",
               request_id: str = "") -> None:
        """Record a request that failed before it reached `call` (body unreadable, malformed or
        invalid): every authenticated request leaves one usage record."""
        call = self._call(principal, route, request_id)
        call.model = model
        call.fail(exc)
        self._record(call)

    async def call(self, principal: Principal, operation: Operation, request: Inference, *,
                   disconnected: Watch | None = None) -> Answer | Stream:
        """Serve one request: an Answer, or a Stream when `request.stream` (chat and completions).
        Raises the gateway's errors (errors.py), LimitExceeded, BackendError, or Disconnected when
        `disconnected()` returned first; the call is settled and recorded in every case."""
        call = self._call(principal, request.route, request.request_id)
        call.body = body = request.body
        try:
            check_caller(principal)
            call.model = str(body.get("model") or "")
            call.model = name = self.resolve_model(principal, call.model)
            lease = await self._admit(call, name, body)
            if self.on_admitted is not None:
                self.on_admitted(call)
        except BaseException as exc:
            call.fail(exc)
            self._record(call)
            raise
        if request.stream and operation in STREAMABLE:
            return await self._stream(call, lease, name, operation, body, disconnected)
        try:
            call.deployment, result = await unless_disconnected(
                disconnected, self.attempts.call(name, operation, body, lease.tokens), self.watches)
            call.usage, call.response_id = result.usage, result.id
            return Answer(result.body, result.usage, lease.headers())
        except AFTER_ADMISSION as exc:
            call.fail(exc)
            raise _with_lease_headers(exc, lease) from exc
        except BaseException as exc:
            call.fail(exc)
            raise
        finally:
            await self._settle(call, lease)

    async def _admit(self, call: Call, name: str, body: dict) -> Lease:
        call.prompt_estimate = estimate_prompt_tokens(body)
        call.max_completion = completion = requested_completion_tokens(body)
        limits, budgets = request_limits(call.principal, name, now=time.time())
        max_cost = max((self.prices.max_cost(d.upstream, call.prompt_estimate, completion, d)
                        for d in self.router.group(name) or ()), default=0.0) if budgets else 0.0
        return await self.limiter.acquire(limits, budgets, tokens=call.prompt_estimate + (completion or 0),
                                          max_cost=max_cost)

    async def _stream(self, call: Call, lease: Lease, name: str, operation: Operation, body: dict,
                      disconnected: Watch | None) -> Stream:
        # The upstream is always asked for usage (billing); a dialect drops it if its client did not ask.
        # A relayed body goes as it is (such upstreams report usage in their own events).
        options = body.get("stream_options") or {}
        upstream_body = body if operation in RELAYED else \
            {**body, "stream": True, "stream_options": {**options, "include_usage": True}}
        call.streamed = True
        try:
            started = await unless_disconnected(
                disconnected, self.attempts.open_stream(name, operation, upstream_body, lease.tokens), self.watches)
        except BaseException as exc:
            call.fail(exc)
            await self._settle(call, lease)
            if isinstance(exc, AFTER_ADMISSION):
                raise _with_lease_headers(exc, lease) from exc
            raise
        call.deployment = d = started.deployment
        self.streams_open += 1
        relayed: list[bytes] = []
        # Where a budget or a tpm limit counts this call's tokens, an upstream that ignores max_tokens is
        # cut at what admission reserved: the request's max_tokens, else (with a budget) what the budget
        # hold assumed (cutoff.py). Calls nothing counts are not parsed chunk by chunk.
        reserved = None
        if operation not in RELAYED and (lease.budgets or d.tpm is not None
                                         or any(spec.tpm is not None for spec in lease.limits)):
            reserved = call.max_completion if call.max_completion is not None else \
                self.prices.completion_allowance(d.upstream, None, d) if lease.budgets else None
        cutoff = Cutoff(reserved, call.prompt_estimate) if reserved is not None else None

        async def finish() -> None:
            """Once, however the stream ends (also when it is closed without having been read)."""
            if call.finished:
                return
            call.finished = True
            with anyio.CancelScope(shield=True):
                try:
                    await started.close()  # before counting: a local model is free to tokenize then
                    if call.usage is None:
                        call.usage = await self._count(call, body, relayed)
                finally:
                    await started.settle(call.usage.total_tokens if call.usage else 0)
                    await self._settle(call, lease)

        async def abandoned() -> None:
            if not call.finished:
                call.fail(Disconnected())  # closed before it was read: nobody took the answer
                await finish()

        return Stream(self._relay(call, started, relayed, cutoff, finish), lease.headers(), abandoned,
                      lambda: call.usage)

    async def _relay(self, call: Call, started: Started, relayed: list[bytes], cutoff: Cutoff | None,
                     finish: Callable[[], Awaitable[None]]) -> AsyncGenerator[Chunk, None]:
        try:
            first = started.first
            if first is None:
                return
            call.ttft_ms = call.elapsed_ms()
            call.response_id = chunk_id(first.data)
            chunk, rest = first, started.stream.__anext__
            while True:
                ending = cutoff.see(chunk) if cutoff is not None else None
                for out in (chunk,) if ending is None else ending:
                    if out.usage is not None:
                        call.usage = out.usage
                    relayed.append(out.data)
                    yield out
                if ending is not None:
                    return  # the reserved tokens are used up: `finish` closes the upstream
                try:
                    chunk = await rest()
                except StopAsyncIteration:
                    return
        except BaseException as exc:
            call.fail(exc)
            raise
        finally:
            await finish()

    async def _count(self, call: Call, body: dict, relayed: list[bytes]) -> Usage:
        """Usage of a stream that ended without a usage chunk: the model's tokenizer where it has
        one, else the character estimate."""
        text = streamed_text(relayed)
        completion = (len(text) + 3) // 4
        if call.deployment is not None and text:
            try:
                completion = len(await asyncio.wait_for(call.deployment.backend.tokenize(text), COUNT_TIMEOUT_S))
            except (BackendError, asyncio.TimeoutError):
                pass
        return Usage(call.prompt_estimate, completion)

    async def _settle(self, call: Call, lease: Lease) -> None:
        usage, d = call.usage, call.deployment
        cost = self.prices.cost(d.upstream, usage.prompt_tokens, usage.completion_tokens, d,
                                cache_read_tokens=usage.cache_read_tokens,
                                cache_creation_tokens=usage.cache_creation_tokens) if usage and d else 0.0
        await self.limiter.release(lease, tokens_used=usage.total_tokens if usage else 0, cost=cost)
        self._record(call, cost)

    def _record(self, call: Call, cost: float = 0.0) -> None:
        p, usage = call.principal, call.usage
        self.calls_open -= 1
        if call.deployment is not None and call.streamed:
            self.streams_open -= 1
        rec = UsageRecord(
            request_id=call.request_id, created_at=call.created_at, model=call.model, route=call.route,
            status=call.status, key_hash=p.key_hash, user_id=p.user_id, team_id=p.team_id,
            deployment=call.deployment.id if call.deployment else None,
            prompt_tokens=usage.prompt_tokens if usage else 0, completion_tokens=usage.completion_tokens if usage else 0,
            cost=cost, latency_ms=call.elapsed_ms(), ttft_ms=call.ttft_ms, error_type=call.error_type,
            streamed=call.streamed, response_id=call.response_id,
            cache_read_tokens=usage.cache_read_tokens if usage else 0,
            cache_creation_tokens=usage.cache_creation_tokens if usage else 0,
        )
        self.usage.record(rec)
        if self.observe is not None:
            self.observe(rec, call)
