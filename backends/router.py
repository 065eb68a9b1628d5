"""Model name -> deployments: choice of deployment, retries, fallbacks and cooldowns.

A request for a public model name tries its deployments (weighted shuffle or least busy), skipping
those cooling down; a retriable failure moves on to the next deployment, then to the configured
fallback model names. Streams are retried only until their first chunk has arrived.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from . import errors
from .base import Backend, Chunk

T = TypeVar("T")


@dataclass(eq=False)
class Deployment:
    model_name: str
    id: str
    backend: Backend
    upstream: str
    weight: float = 1.0
    rpm: int | None = None
    tpm: int | None = None
    input_cost_per_token: float | None = None
    output_cost_per_token: float | None = None
    in_flight: int = 0
    cooldown_until: float = 0.0
    failures: deque[float] = field(default_factory=deque)
    last_error: str | None = None

    def state(self, now: float) -> dict[str, Any]:
        return {
            "model_name": self.model_name, "id": self.id, "upstream": self.upstream,
            "in_flight": self.in_flight, "cooling_down": self.cooldown_until > now,
            "cooldown_remaining_s": round(max(0.0, self.cooldown_until - now), 1), "last_error": self.last_error,
        }


@dataclass
class RouterPolicy:
    num_retries: int = 2
    allowed_fails: int = 3
    cooldown_time: float = 30.0
    fallbacks: dict[str, list[str]] = field(default_factory=dict)
    strategy: str = "simple-shuffle"


class Router:
    def __init__(self, deployments: list[Deployment], policy: RouterPolicy,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None):
        self.policy = policy
        self._clock = clock
        self._rng = rng or random.Random()
        self.groups: dict[str, list[Deployment]] = {}
        for d in deployments:
            self.groups.setdefault(d.model_name, []).append(d)
        self._by_id = {d.id: d for d in deployments}
        # Told of every cooldown this router starts (proxy/cooldowns.py shares them through Redis).
        self.on_cooldown: Callable[[Deployment, float], None] | None = None

    def names(self) -> list[str]:
        return list(self.groups)

    def deployments(self) -> list[Deployment]:
        return [d for group in self.groups.values() for d in group]

    def __contains__(self, name: str) -> bool:
        return name in self.groups

    def _order(self, name: str) -> list[Deployment]:
        """Deployments of one model in the order to try them: healthy first, cooling down last."""
        now = self._clock()
        group = self.groups[name]
        ready = [d for d in group if d.cooldown_until <= now]
        cooling = sorted((d for d in group if d.cooldown_until > now), key=lambda d: d.cooldown_until)
        if self.policy.strategy == "least-busy":
            ready.sort(key=lambda d: d.in_flight)
        elif len(ready) > 1:
            # Weighted shuffle: Efraimidis-Spirakis keys, larger first.
            ready.sort(key=lambda d: self._rng.random() ** (1.0 / d.weight), reverse=True)
        return ready + cooling

    def _candidates(self, name: str) -> list[Deployment]:
        """Every attempt for a request: retries over this model's deployments, then fallbacks."""
        order = self._order(name)
        attempts = [order[i % len(order)] for i in range(1 + self.policy.num_retries)]
        for fallback in self.policy.fallbacks.get(name, []):
            if fallback in self.groups and fallback != name:
                attempts.extend(self._order(fallback)[:1])
        return attempts

    def _failed(self, d: Deployment, exc: errors.BackendError) -> None:
        if isinstance(exc, errors.DeploymentAtCapacity):
            return  # its own rpm/tpm is used up: try others, but it is not unhealthy
        now = self._clock()
        d.last_error = exc.message
        d.failures.append(now)
        while d.failures and d.failures[0] < now - 60:
            d.failures.popleft()
        if len(d.failures) > self.policy.allowed_fails:
            d.cooldown_until = now + self.policy.cooldown_time
            d.failures.clear()
            if self.on_cooldown is not None:
                self.on_cooldown(d, self.policy.cooldown_time)

    def cool_down(self, deployment_id: str, seconds: float, reason: str | None = None) -> bool:
        """Skip a deployment for `seconds` because another process cooled it down; False if unknown."""
        d = self._by_id.get(deployment_id)
        if d is None:
            return False
        d.cooldown_until = max(d.cooldown_until, self._clock() + seconds)
        d.failures.clear()
        if reason:
            d.last_error = reason
        return True

    async def call(self, name: str, op: Callable[[Deployment], Awaitable[T]]) -> tuple[Deployment, T]:
        last: errors.BackendError | None = None
        for d in self._candidates(name):
            d.in_flight += 1
            try:
                return d, await op(d)
            except errors.BackendError as exc:
                if not exc.retriable:
                    raise
                self._failed(d, exc)
                last = exc
            finally:
                d.in_flight -= 1
        assert last is not None
        raise last

    async def open_stream(self, name: str, op: Callable[[Deployment], AsyncGenerator[Chunk, None]]
                          ) -> tuple[Deployment, AsyncIterator[Chunk]]:
        """Start a stream on the first deployment that yields a first chunk; the returned iterator
        replays that chunk and then relays the rest (no retries once bytes may have reached a client)."""
        last: errors.BackendError | None = None
        for d in self._candidates(name):
            stream = op(d)
            d.in_flight += 1
            try:
                first = await anext(stream)
            except StopAsyncIteration:
                d.in_flight -= 1
                return d, _empty()
            except errors.BackendError as exc:
                d.in_flight -= 1
                await stream.aclose()
                if not exc.retriable:
                    raise
                self._failed(d, exc)
                last = exc
                continue
            except BaseException:
                d.in_flight -= 1
                await stream.aclose()
                raise
            return d, _relay(d, first, stream)
        assert last is not None
        raise last


async def _empty() -> AsyncIterator[Chunk]:
    return
    yield  # pragma: no cover - makes this an async generator


async def _relay(d: Deployment, first: Chunk, stream: AsyncGenerator[Chunk, None]) -> AsyncIterator[Chunk]:
    try:
        yield first
        async for chunk in stream:
            yield chunk
    finally:
        d.in_flight -= 1
        await stream.aclose()
