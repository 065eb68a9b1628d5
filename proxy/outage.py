"""The database (or another dependency) being away, as background tasks see it: logged once when it
goes and once when it is back, without a traceback, and writes that must not be lost retried with
backoff until they succeed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class Outage:
    def __init__(self, log: logging.Logger, what: str):
        self.log = log
        self.what = what
        self.down = False

    def failed(self, exc: Exception) -> None:
        if not self.down:
            self.down = True
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            self.log.warning("%s: the database is unreachable (%s: %s); retrying with backoff",
                             self.what, type(exc).__name__, first)

    def succeeded(self) -> None:
        if self.down:
            self.down = False
            self.log.warning("%s: the database is reachable again", self.what)

    async def persist(self, write: Callable[[], Awaitable[T]], *, max_delay: float,
                      give_up: Callable[[float], bool] = lambda delay: False) -> T | None:
        """`write()`'s result once it succeeds, retried every 0.5 s doubling up to `max_delay`;
        None if `give_up(next delay)` says so first."""
        delay = 0.5
        while True:
            try:
                result = await write()
            except Exception as exc:
                self.failed(exc)
                if give_up(delay):
                    return None
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_delay)
                continue
            self.succeeded()
            return result
