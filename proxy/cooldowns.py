"""Deployment cooldowns shared by every gateway process through Redis: when one process cools a
deployment down (more than `allowed_fails` failures in a minute), it publishes that on a channel and
every other process skips the deployment for the same `cooldown_time`, instead of each finding out
with failures of its own. Without Redis each process keeps its own cooldowns."""

from __future__ import annotations

import asyncio
import logging
import uuid

import orjson
import redis.asyncio as aioredis

from backends.router import Deployment, Router

log = logging.getLogger("keystile")
CHANNEL = "keystile:cooldown"


class CooldownSync:
    def __init__(self, router: Router, redis: aioredis.Redis | None):
        self._router = router
        self._redis = redis
        self._origin = uuid.uuid4().hex
        self._task: asyncio.Task | None = None
        self._sending: set[asyncio.Task] = set()
        self._subscribed = asyncio.Event()

    async def start(self) -> None:
        if self._redis is None:
            return
        self._router.on_cooldown = self._cooled
        self._task = asyncio.create_task(self._listen())
        try:
            await asyncio.wait_for(self._subscribed.wait(), 5)
        except asyncio.TimeoutError:
            log.warning("shared cooldowns: Redis subscription not confirmed yet; retrying in the background")

    def _cooled(self, d: Deployment, seconds: float) -> None:
        """Called by the router (synchronously, on the event loop) when it cools a deployment down."""
        task = asyncio.get_running_loop().create_task(self._publish(d.id, seconds, d.last_error))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _publish(self, deployment_id: str, seconds: float, reason: str | None) -> None:
        message = orjson.dumps({"origin": self._origin, "id": deployment_id, "seconds": seconds, "reason": reason})
        try:
            await self._redis.publish(CHANNEL, message)
        except Exception as exc:  # the others find out from their own failures, as without Redis
            log.warning("cooldown of %s not shared (%s)", deployment_id, exc)

    async def _listen(self) -> None:
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    self._subscribed.set()
                    async for message in pubsub.listen():
                        if message.get("type") != "message":
                            continue
                        data = orjson.loads(message["data"])
                        if data.get("origin") != self._origin:
                            self._router.cool_down(data["id"], float(data["seconds"]), data.get("reason"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("shared cooldowns: Redis subscription lost (%s); reconnecting", exc)
                await asyncio.sleep(1)

    async def aclose(self) -> None:
        self._router.on_cooldown = None
        tasks = [t for t in (self._task, *self._sending) if t is not None]
        if self._task is not None:
            self._task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
