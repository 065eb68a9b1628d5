"""The database (or another dependency) being away, as background tasks see it: logged once when it
goes and once when it is back, without a traceback; loops that poll it (the key change feed, the
model catalog, deployments), and writes that must not be lost retried with backoff until they
succeed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class Outage:
    def __init__(self, log: logging.Logger, what: str, doing: str = "reach the database",
                 meanwhile: str = "retrying with backoff"):
        self._log, self._what, self._doing, self._meanwhile = log, what, doing, meanwhile
        self.failing = False

    def failed(self, exc: Exception) -> None:
        if not self.failing:
            self.failing = True
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            self._log.error("%s: cannot %s (%s: %s); %s", self._what, self._doing, type(exc).__name__, first,
                            self._meanwhile)

    def ended(self) -> None:
        if self.failing:
            self.failing = False
            self._log.warning("%s: database reachable again", self._what)

    async def persist(self, write: Callable[[], Awaitable[T]], *, max_delay: float,
                      give_up: Callable[[float], bool] = lambda delay: False) -> T | None:
        """`write()`'s result once it succeeds, retried every 0.5 s doubling up to `max_delay`;
        None if `give_up(next delay)` says so first."""
        delay = 0.5
        while True:
            try:
                result = await write()
            except Exception as exc:  # noqa: BLE001 - any driver error: the database is away
                self.failed(exc)
                if give_up(delay):
                    return None
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_delay)
                continue
            self.ended()
            return result


async def poll_every(interval: float, step: Callable[[], Awaitable[None]], outage: Outage,
                     wake: asyncio.Event | None = None) -> None:
    """Run `step` every `interval` seconds (or at once when `wake` is set), forever; a failing one is
    the database being away."""
    while True:
        if wake is None:
            await asyncio.sleep(interval)
        else:
            try:
                await asyncio.wait_for(wake.wait(), interval)
            except asyncio.TimeoutError:
                pass
            wake.clear()
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any driver error: the database is away
            outage.failed(exc)
            continue
        outage.ended()
