"""Making a call's attempts on deployments, with each deployment's own rate limit: the router says
in which order (retries, fallbacks, cooldowns); this runs them.

A deployment's `rpm`/`tpm` (config.yaml) is counted here and only here: an attempt first takes a
lease on the deployment's limit, and a deployment whose limit is used up is passed over (it is
busy, not unhealthy). When every attempt was refused by a limit the call is refused with a
LimitExceeded on that deployment (a 429, code `deployment_rate_limited`); otherwise the last
backend failure is raised. A stream is retried only until its first chunk has arrived: after that
bytes may have reached the client."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable

from backends.base import Backend, Chunk, Completion
from backends.errors import BackendError
from backends.router import Deployment, Router

from ..domain import LimitExceeded, Limits, LimitSpec
from ..limits.base import Lease, Limiter, merge_limits
from .values import Operation

CALLS: dict[Operation, Callable[[Backend, dict], Awaitable[Completion]]] = {
    "chat": lambda backend, body: backend.chat(body),
    "completions": lambda backend, body: backend.complete(body),
    "embeddings": lambda backend, body: backend.embed(body),
    "rerank": lambda backend, body: backend.rerank(body),
    "messages": lambda backend, body: backend.messages(body),  # type: ignore[attr-defined]
    "fim": lambda backend, body: backend.fim(body),  # type: ignore[attr-defined]
    "tokenize": lambda backend, body: backend.encode(body),
    "detokenize": lambda backend, body: backend.decode(body),
    "images": lambda backend, body: backend.images(body),
    "moderations": lambda backend, body: backend.moderate(body),
    "count_tokens": lambda backend, body: backend.count_tokens(body),  # type: ignore[attr-defined]
}
STREAMS: dict[Operation, Callable[[Backend, dict], AsyncGenerator[Chunk, None]]] = {
    "chat": lambda backend, body: backend.chat_stream(body),  # type: ignore[dict-item]
    "completions": lambda backend, body: backend.complete_stream(body),  # type: ignore[dict-item]
    "messages": lambda backend, body: backend.messages_stream(body),  # type: ignore[attr-defined]
    "fim": lambda backend, body: backend.fim_stream(body),  # type: ignore[attr-defined]
}


MAX_KNOWN = 4096  # deployments whose limits are kept worked out


def deployment_limits(d: Deployment) -> Limits | None:
    """A deployment's own rpm/tpm as the limiter takes them, or None when it has neither."""
    if d.rpm is None and d.tpm is None:
        return None
    return merge_limits([LimitSpec(f"deployment:{d.id}", rpm=d.rpm, tpm=d.tpm)])


class Attempts:
    def __init__(self, router: Router, limiter: Limiter):
        self.router = router
        self.limiter = limiter
        # Per deployment object: one replaced at run time (POST /model/update) keeps its id but is a
        # new object, whose limits are worked out again.
        self._limits: dict[Deployment, Limits | None] = {}

    def _limits_of(self, d: Deployment) -> Limits | None:
        """`d`'s own limits, worked out once (also for a deployment added at run time)."""
        try:
            return self._limits[d]
        except KeyError:
            if len(self._limits) >= MAX_KNOWN:  # bounded: names matched by wildcards come and go
                self._limits.clear()
            limits = self._limits[d] = deployment_limits(d)
            return limits

    async def _lease(self, d: Deployment, tokens: int) -> Lease | None:
        """A lease on `d`'s own limit (None when it has none), or LimitExceeded."""
        limits = self._limits_of(d)
        return None if limits is None else await self.limiter.acquire(limits, tokens=tokens)

    def _failed(self, d: Deployment, exc: BackendError) -> None:
        if not exc.retriable:
            raise exc
        self.router.failed(d, exc)

    async def call(self, name: str, operation: Operation, body: dict, tokens: int) -> tuple[Deployment, Completion]:
        """The first completed answer among the attempts for model `name`."""
        run = CALLS[operation]
        last: Exception | None = None
        for d in self.router.attempts(name):
            lease = None
            if self._limits_of(d) is not None:
                try:
                    lease = await self._lease(d, tokens)
                except LimitExceeded as exc:
                    last = exc
                    continue
            d.in_flight += 1
            result: Completion | None = None
            try:
                result = await run(d.backend, body)
                return d, result
            except BackendError as exc:
                self._failed(d, exc)
                last = exc
            finally:
                d.in_flight -= 1
                if lease is not None:
                    used = result.usage.total_tokens if result is not None and result.usage else 0
                    await self.limiter.release(lease, tokens_used=used, cost=0.0)
        raise _exhausted(last)

    async def open_stream(self, name: str, operation: Operation, body: dict, tokens: int) -> Started:
        """Start a stream on the first deployment that yields a first chunk (or ends at once)."""
        begin = STREAMS[operation]
        last: Exception | None = None
        for d in self.router.attempts(name):
            try:
                lease = await self._lease(d, tokens)
            except LimitExceeded as exc:
                last = exc
                continue
            stream = begin(d.backend, body)
            d.in_flight += 1
            started = Started(self, d, stream, lease)
            try:
                started.first = await anext(stream)
            except StopAsyncIteration:
                return started
            except BaseException as exc:
                await started.close()
                await started.settle(0)
                if not isinstance(exc, BackendError):
                    raise
                self._failed(d, exc)
                last = exc
                continue
            return started
        raise _exhausted(last)


class Started:
    """A stream that has started on `deployment`: its `first` chunk (None if it ended at once), then
    the rest from `stream`. However far it was read, its reader calls `close()` (the upstream
    stream ends, the deployment is free) and then `settle(used)` (the deployment's lease gets the
    tokens used); each acts once."""

    __slots__ = ("_attempts", "deployment", "stream", "_lease", "first", "_closed")

    def __init__(self, attempts: Attempts, deployment: Deployment, stream: AsyncGenerator[Chunk, None],
                 lease: Lease | None):
        self._attempts, self.deployment, self.stream, self._lease = attempts, deployment, stream, lease
        self.first: Chunk | None = None
        self._closed = False

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.deployment.in_flight -= 1
            await self.stream.aclose()

    async def settle(self, used: int) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            await self._attempts.limiter.release(lease, tokens_used=used, cost=0.0)


def _exhausted(last: Exception | None) -> Exception:
    """What a call that no attempt served raises: the last failure, where every attempt was
    refused by its deployment's limit a refusal saying so."""
    if isinstance(last, LimitExceeded):
        return LimitExceeded(f"every deployment of this model is at its rate limit ({last.message})",
                             scope=last.scope, kind=last.kind, limit=last.limit, remaining=last.remaining,
                             reset_s=last.reset_s)
    assert last is not None, "the router gave no attempt"
    return last
