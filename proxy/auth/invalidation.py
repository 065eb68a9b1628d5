"""Spreading key/user/team changes: applied to this process's cache at once, and published on a
Redis channel that every other gateway process applies within milliseconds. Without REDIS_URL (or
while Redis is away) the change feed (changes.py) tells every process within a second."""

from __future__ import annotations

import logging
from typing import Any

import redis.asyncio as aioredis

from ..pubsub import Channel
from .cache import KeyCache, Subject

log = logging.getLogger("keystile")
CHANNEL = "keystile:invalidate"


class Invalidator:
    def __init__(self, cache: KeyCache, redis: aioredis.Redis | None):
        self._cache = cache
        # On every (re)subscription the cache starts clean: what changed while nobody listened is unknown.
        self._channel = Channel(redis, CHANNEL, self._apply, what="key invalidation",
                                on_subscribe=lambda: cache.invalidate("all")) if redis is not None else None

    async def start(self) -> None:
        if self._channel is not None:
            await self._channel.start()

    def _apply(self, data: dict[str, Any]) -> None:
        self._cache.invalidate(data["kind"], data.get("id"))

    async def publish(self, kind: Subject, ident: str | None = None) -> None:
        self._cache.invalidate(kind, ident)
        if self._channel is not None:
            try:
                await self._channel.publish({"kind": kind, "id": ident})
            except Exception as exc:  # the change feed still tells them; the change itself is committed
                log.warning("key invalidation not published (%s); other instances learn of it from the change feed within a second", exc)

    async def aclose(self) -> None:
        if self._channel is not None:
            await self._channel.aclose()
