"""Work that stops when the caller goes away: `unless_disconnected` cancels what is in flight the
moment the client hangs up (its `finally` blocks settle limits and accounting) and raises
Disconnected. The caller is watched through a plain coroutine function, `disconnected()`, that
returns when the client is gone: the HTTP edge builds it from ASGI `receive`; a caller with no
client to lose passes None."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .deadlines import Deadlines

T = TypeVar("T")
Watch = Callable[[], Awaitable[None]]
WATCH_AFTER_S = 0.05


class Disconnected(Exception):
    """The client hung up before its answer was complete (recorded as status 499)."""


async def unless_disconnected(disconnected: Watch | None, work: Awaitable[T], watches: Deadlines) -> T:
    """Await `work`, cancelling it if `disconnected()` returns first; then raise Disconnected.
    This is on every request, so the watcher task is only started once the work has run for
    `watches.delay` (the gateway's `watches`, WATCH_AFTER_S): quick answers never pay for one, nor
    for a timer of their own, and a hang-up is noticed at most that much (and a quarter) later."""
    if disconnected is None:
        return await work
    current = asyncio.current_task()
    assert current is not None
    watcher: asyncio.Task | None = None
    gone = False

    async def watch() -> None:
        nonlocal gone
        await disconnected()
        gone = True
        current.cancel()

    def start() -> None:
        nonlocal watcher
        watcher = asyncio.create_task(watch())

    deadline = watches.add(start)
    try:
        return await work
    except asyncio.CancelledError:
        if gone and current.uncancel() == 0:
            raise Disconnected() from None
        raise
    finally:
        watches.remove(deadline)
        if watcher is not None:
            watcher.cancel()
