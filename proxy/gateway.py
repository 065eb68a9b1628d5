"""The inference path every route and dialect shares:
body -> model check -> limits (one atomic admission) -> router -> backend -> response, and, however
it ends, one settlement: limits released with the real usage, one usage record queued.
Streams are relayed chunk by chunk as SSE; a client that hangs up is billed for what was generated."""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal

import anyio
from pydantic import BaseModel
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from backends.base import Chunk, Completion, Usage
from backends.errors import BackendError, DeploymentAtCapacity
from backends.router import Deployment, Router

from .accounting.prices import PriceMap
from .accounting.record import UsageRecord
from .accounting.writer import UsageWriter
from .auth.principal import Principal
from .errors import Forbidden, KeystileError, NotFound, as_keystile, error_body
from .limits import Lease, Limiter, LimitExceeded, deployment_limit, request_limits
from .requests import read_json, validate
from .streaming import JSONAnswer, RelayStream, unless_disconnected
from .usage import estimate_prompt_tokens, requested_completion_tokens, streamed_text

Kind = Literal["chat", "completions", "embeddings"]
COUNT_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class Operation:
    call: str
    stream: str | None


OPERATIONS: dict[Kind, Operation] = {
    "chat": Operation("chat", "chat_stream"),
    "completions": Operation("complete", "complete_stream"),
    "embeddings": Operation("embed", None),
}


@dataclass(slots=True)
class Call:
    """One request's progress, from which its usage record is made."""

    principal: Principal
    route: str
    started: float = field(default_factory=time.perf_counter)
    created_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    request_id: str = ""
    model: str = ""
    prompt_estimate: int = 0
    deployment: Deployment | None = None
    usage: Usage | None = None
    status: int = 200
    error_type: str | None = None
    ttft_ms: float | None = None
    streamed: bool = False

    def fail(self, exc: BaseException) -> None:
        err = as_keystile(exc) if isinstance(exc, Exception) and not isinstance(exc, ClientDisconnect) else None
        self.status = err.status if err else 499
        self.error_type = err.type if err else "client_disconnected"

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000


def _with_lease_headers(exc: BackendError, lease: Lease) -> KeystileError:
    """A failure after admission answers with the same x-ratelimit-* headers as a success would."""
    err = as_keystile(exc)
    for name, value in lease.headers():
        err.headers.setdefault(name.decode(), value.decode())
    return err


class Gateway:
    def __init__(self, router: Router, limiter: Limiter, prices: PriceMap, usage: UsageWriter, *,
                 max_request_bytes: int):
        self.router = router
        self.limiter = limiter
        self.prices = prices
        self.usage = usage
        self.max_request_bytes = max_request_bytes
        # Request ids: a random per-process prefix and a counter (unique without a syscall each).
        self._id_prefix = secrets.token_hex(8)
        self._ids = itertools.count()

    def resolve_model(self, principal: Principal, requested: str) -> str:
        name = principal.resolve(requested)
        if name not in self.router:
            raise NotFound(f"model '{requested}' does not exist or is not served here")
        if not principal.may_use(name):
            raise Forbidden(f"this key may not use model '{requested}'", code="model_not_allowed")
        return name

    async def serve(self, request: Request, principal: Principal, kind: Kind, wire: type[BaseModel]) -> Response:
        call = Call(principal, request.scope["path"], request_id=f"{self._id_prefix}{next(self._ids):x}")
        try:
            body = await read_json(request, self.max_request_bytes)
            call.model = str(body.get("model") or "")
            validate(wire, body)
            call.model = name = self.resolve_model(principal, body["model"])
            lease = await self._admit(call, name, body)
        except ClientDisconnect:
            call.fail(ClientDisconnect())
            self._record(call)
            return Response(status_code=499)  # hung up while sending the body
        except BaseException as exc:
            call.fail(exc)
            self._record(call)
            raise
        op = OPERATIONS[kind]
        try:
            if op.stream and body.get("stream"):
                return await self._stream(request, call, lease, name, op.stream, body)
            try:
                call.deployment, result = await unless_disconnected(
                    request.receive, self.router.call(name, self._attempt(op.call, body, lease.tokens)))
                call.usage = result.usage
                return JSONAnswer(result.body, lease.headers())
            except BackendError as exc:
                call.fail(exc)
                raise _with_lease_headers(exc, lease) from exc
            except BaseException as exc:
                call.fail(exc)
                raise
            finally:
                await self._settle(call, lease)
        except ClientDisconnect:
            return Response(status_code=499)  # nobody is listening; limits and accounting are settled

    async def _admit(self, call: Call, name: str, body: dict) -> Lease:
        call.prompt_estimate = estimate_prompt_tokens(body)
        completion = requested_completion_tokens(body)
        limits, budgets = request_limits(call.principal, name, now=time.time())
        max_cost = max((self.prices.max_cost(d.upstream, call.prompt_estimate, completion, d)
                        for d in self.router.groups[name]), default=0.0) if budgets else 0.0
        return await self.limiter.acquire(limits, budgets, tokens=call.prompt_estimate + (completion or 0),
                                          max_cost=max_cost)

    async def _deployment_lease(self, d: Deployment, tokens: int) -> Lease | None:
        spec = deployment_limit(d.id, d.rpm, d.tpm)
        if spec is None:
            return None
        try:
            return await self.limiter.acquire([spec], tokens=tokens)
        except LimitExceeded as exc:
            raise DeploymentAtCapacity(f"every deployment of this model is at its rate limit ({exc.message})",
                                       retry_after=exc.reset_s) from exc

    def _attempt(self, method: str, body: dict, tokens: int):
        async def run(d: Deployment) -> Completion:
            lease = await self._deployment_lease(d, tokens)
            result: Completion | None = None
            try:
                result = await getattr(d.backend, method)(body)
                return result
            finally:
                if lease is not None:
                    used = result.usage.total_tokens if result is not None and result.usage else 0
                    await self.limiter.release(lease, tokens_used=used, cost=0.0)
        return run

    def _attempt_stream(self, method: str, body: dict, tokens: int):
        def run(d: Deployment) -> AsyncGenerator[Chunk, None]:
            if d.rpm is None and d.tpm is None:
                return getattr(d.backend, method)(body)
            return self._limited(d, getattr(d.backend, method)(body), tokens)
        return run

    async def _limited(self, d: Deployment, stream: AsyncGenerator[Chunk, None], tokens: int
                       ) -> AsyncGenerator[Chunk, None]:
        lease = await self._deployment_lease(d, tokens)
        used = 0
        try:
            async for chunk in stream:
                if chunk.usage is not None:
                    used = chunk.usage.total_tokens
                yield chunk
        finally:
            await stream.aclose()
            if lease is not None:
                await self.limiter.release(lease, tokens_used=used, cost=0.0)

    async def _stream(self, request: Request, call: Call, lease: Lease, name: str, method: str,
                      body: dict) -> Response:
        options = body.get("stream_options") or {}
        upstream_body = {**body, "stream_options": {**options, "include_usage": True}}
        call.streamed = True
        try:
            call.deployment, stream = await unless_disconnected(request.receive, self.router.open_stream(
                name, self._attempt_stream(method, upstream_body, lease.tokens)))
        except BaseException as exc:
            call.fail(exc)
            await self._settle(call, lease)
            if isinstance(exc, BackendError):
                raise _with_lease_headers(exc, lease) from exc
            raise
        return RelayStream(self._sse(call, lease, stream, bool(options.get("include_usage")), body),
                           headers=lease.headers())

    async def _sse(self, call: Call, lease: Lease, stream: AsyncIterator[Chunk], include_usage: bool,
                   body: dict) -> AsyncIterator[bytes]:
        relayed: list[bytes] = []
        try:
            async for chunk in stream:
                if call.ttft_ms is None:
                    call.ttft_ms = call.elapsed_ms()
                if chunk.usage is not None:
                    call.usage = chunk.usage
                    if not include_usage and chunk.usage_only:
                        continue
                relayed.append(chunk.data)
                yield b"data: " + chunk.data + b"\n\n"
            yield b"data: [DONE]\n\n"
        except BackendError as exc:
            # Bytes have gone out already: the failure travels as an error event the SDKs raise.
            call.fail(exc)
            yield b"data: " + error_body(as_keystile(exc)) + b"\n\n"
        except BaseException as exc:
            call.fail(exc)
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await stream.aclose()
                if call.usage is None:
                    call.usage = await self._count(call, body, relayed)
                await self._settle(call, lease)

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
        cost = self.prices.cost(d.upstream, usage.prompt_tokens, usage.completion_tokens, d) if usage and d else 0.0
        await self.limiter.release(lease, tokens_used=usage.total_tokens if usage else 0, cost=cost)
        self._record(call, cost)

    def _record(self, call: Call, cost: float = 0.0) -> None:
        p, usage = call.principal, call.usage
        self.usage.record(UsageRecord(
            request_id=call.request_id, created_at=call.created_at, model=call.model, route=call.route,
            status=call.status, key_hash=p.key_hash, user_id=p.user_id, team_id=p.team_id,
            deployment=call.deployment.id if call.deployment else None,
            prompt_tokens=usage.prompt_tokens if usage else 0, completion_tokens=usage.completion_tokens if usage else 0,
            cost=cost, latency_ms=call.elapsed_ms(), ttft_ms=call.ttft_ms, error_type=call.error_type,
            streamed=call.streamed,
        ))
