"""Background loops that poll the database (the key change feed, the model catalog): a step every
`interval` seconds (or at once when woken), an outage logged once when it starts and once when it
ends, not once a poll."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable


class Outage:
    def __init__(self, log: logging.Logger, what: str, doing: str, meanwhile: str):
        self._log, self._what, self._doing, self._meanwhile = log, what, doing, meanwhile
        self.failing = False

    def failed(self, exc: Exception) -> None:
        if not self.failing:
            self.failing = True
            self._log.error("%s: cannot %s (%s: %s); %s", self._what, self._doing, type(exc).__name__,
                            str(exc).split("\n", 1)[0], self._meanwhile)

    def ended(self) -> None:
        if self.failing:
            self.failing = False
            self._log.warning("%s: database reachable again", self._what)


async def poll_every(interval: float, step: Callable[[], Awaitable[None]], outage: Outage,
                     on_failure: Callable[[], None] | None = None, wake: asyncio.Event | None = None) -> None:
    """Run `step` forever; a failing one is the database being away (`on_failure` runs each time)."""
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
            if on_failure is not None:
                on_failure()
            continue
        outage.ended()
