"""Deployment cooldowns shared by every gateway process through Redis: when one process cools a
deployment down (more than `allowed_fails` failures in a minute), it publishes that and every other
process skips the deployment for the same `cooldown_time`, instead of each finding out with
failures of its own. Without Redis each process keeps its own cooldowns."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis.asyncio as aioredis

from backends.router import Deployment, Router

from .pubsub import Channel

log = logging.getLogger("keystile")


class CooldownSync:
    def __init__(self, router: Router, redis: aioredis.Redis | None):
        self._router = router
        self._channel = Channel(redis, "keystile:cooldown", self._apply, what="shared cooldowns") if redis else None
        self._sending: set[asyncio.Task] = set()

    async def start(self) -> None:
        if self._channel is not None:
            self._router.on_cooldown = self._cooled
            await self._channel.start()

    def _apply(self, data: dict[str, Any]) -> None:
        self._router.cool_down(data["id"], float(data["seconds"]), data.get("reason"))

    def _cooled(self, d: Deployment, seconds: float) -> None:
        """Called by the router (synchronously, on the event loop) when it cools a deployment down."""
        task = asyncio.get_running_loop().create_task(self._publish(d.id, seconds, d.last_error))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _publish(self, deployment_id: str, seconds: float, reason: str | None) -> None:
        try:
            await self._channel.publish({"id": deployment_id, "seconds": seconds, "reason": reason})
        except Exception as exc:  # the others find out from failures of their own, as without Redis
            log.warning("cooldown of %s not shared (%s)", deployment_id, exc)

    async def aclose(self) -> None:
        self._router.on_cooldown = None
        if self._channel is not None:
            await self._channel.aclose()
        await asyncio.gather(*self._sending, return_exceptions=True)
