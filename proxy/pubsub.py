"""One Redis pub/sub channel between the gateway processes: `publish` a JSON message, and every
other process's `on_message` receives it (a process skips its own). The subscription reconnects
every second while Redis is away, logging once per outage; `on_subscribe` runs on every
(re)subscription, for whatever could have been missed meanwhile."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import redis.asyncio as aioredis

log = logging.getLogger("keystile")


class Channel:
    def __init__(self, redis: aioredis.Redis, name: str, on_message: Callable[[dict[str, Any]], None], *,
                 what: str, on_subscribe: Callable[[], None] | None = None):
        self._redis = redis
        self.name = name
        self._on_message = on_message
        self._on_subscribe = on_subscribe
        self._what = what
        self._origin = uuid.uuid4().hex
        self._task: asyncio.Task | None = None
        self._subscribed = asyncio.Event()

    async def start(self, wait_s: float = 5.0) -> None:
        self._task = asyncio.create_task(self._listen())
        try:
            await asyncio.wait_for(self._subscribed.wait(), wait_s)
        except asyncio.TimeoutError:
            log.warning("%s: Redis subscription not confirmed yet; retrying in the background", self._what)

    async def publish(self, data: dict[str, Any]) -> None:
        """Raises what Redis raises: the caller knows what a lost message means for it."""
        await self._redis.publish(self.name, orjson.dumps({**data, "origin": self._origin}))

    async def _listen(self) -> None:
        lost = False
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(self.name)
                    self._subscribed.set()
                    if lost:
                        log.warning("%s: Redis subscription restored", self._what)
                        lost = False
                    if self._on_subscribe is not None:
                        self._on_subscribe()
                    async for message in pubsub.listen():
                        if message.get("type") != "message":
                            continue
                        data = orjson.loads(message["data"])
                        if data.get("origin") != self._origin:
                            self._on_message(data)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not lost:  # once per outage, not once a second
                    log.warning("%s: Redis subscription lost (%s); reconnecting every second (the change "
                                "feed still tells this process of key changes)", self._what, exc)
                    lost = True
                await asyncio.sleep(1)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
