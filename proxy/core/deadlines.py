"""Callbacks due a fixed delay after they are added, unless removed before: on the hot path, what
every call asks to start watching its client (cancel.py) and every stream for its keep-alive
commit (proxy/dialects/base.py). A timer of its own each (uvloop's call_later and cancel) costs
1-3 µs of CPU; here adding and removing one is a dict insertion and deletion, and one timer,
running only while some are pending, checks them every quarter of the delay (a callback runs up
to a quarter late)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable


class Deadlines:
    def __init__(self, delay: float):
        self.delay = delay
        self._due: dict[int, tuple[float, Callable[[], None]]] = {}  # in the order added, so by due time
        self._keys = itertools.count()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, callback: Callable[[], None]) -> int:
        """`callback` to run `delay` seconds from now (in the running loop); the key to `remove` it."""
        loop = asyncio.get_running_loop()
        key = next(self._keys)
        self._due[key] = (loop.time() + self.delay, callback)
        if self._timer is None:
            self._timer = loop.call_later(self.delay / 4, self._check, loop)
        return key

    def remove(self, key: int) -> None:
        self._due.pop(key, None)

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        due = []
        for key, (when, _) in self._due.items():
            if when > now:
                break
            due.append(key)
        try:
            for key in due:
                self._due.pop(key)[1]()
        finally:  # a callback that raised (the loop reports it) stops no other deadline
            if self._due and self._timer is None:
                self._timer = loop.call_later(self.delay / 4, self._check, loop)
