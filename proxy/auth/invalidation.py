"""Spreading key/user/team changes: applied to this process's cache at once, and published on a
Redis channel that every other gateway process applies within milliseconds. Without REDIS_URL (or
while Redis is away) the change feed (changes.py) tells every process within a second."""

from __future__ import annotations

import asyncio
import logging
import uuid

import orjson
import redis.asyncio as aioredis

from .cache import Kind, KeyCache

log = logging.getLogger("keystile")
CHANNEL = "keystile:invalidate"


class Invalidator:
    def __init__(self, cache: KeyCache, redis: aioredis.Redis | None):
        self._cache = cache
        self._redis = redis
        self._origin = uuid.uuid4().hex
        self._task: asyncio.Task | None = None
        self._subscribed = asyncio.Event()

    async def start(self) -> None:
        if self._redis is not None:
            self._task = asyncio.create_task(self._listen())
            try:
                await asyncio.wait_for(self._subscribed.wait(), 5)
            except asyncio.TimeoutError:
                log.warning("key invalidation: Redis subscription not confirmed yet; retrying in the background")

    async def publish(self, kind: Kind, ident: str | None = None) -> None:
        self._cache.invalidate(kind, ident)
        if self._redis is not None:
            message = orjson.dumps({"origin": self._origin, "kind": kind, "id": ident})
            try:
                await self._redis.publish(CHANNEL, message)
            except Exception as exc:  # the change feed still tells them; the change itself is committed
                log.warning("key invalidation not published (%s); other instances learn of it from the change feed within a second", exc)

    async def _listen(self) -> None:
        lost = False
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    self._subscribed.set()
                    if lost:
                        log.warning("key invalidation: Redis subscription restored")
                        lost = False
                    # Whatever changed while we were not listening is unknown: start clean.
                    self._cache.invalidate("all")
                    async for message in pubsub.listen():
                        if message.get("type") != "message":
                            continue
                        data = orjson.loads(message["data"])
                        if data.get("origin") != self._origin:
                            self._cache.invalidate(data["kind"], data.get("id"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not lost:  # once per outage, not once a second
                    log.warning("key invalidation: Redis subscription lost (%s); reconnecting every second "
                                "(the change feed still tells this process of changes)", exc)
                    lost = True
                await asyncio.sleep(1)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
