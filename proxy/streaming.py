"""Relaying while watching the client: work in flight is cancelled the moment the client hangs up
(its `finally` blocks settle limits and accounting), whatever the ASGI server does."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import ClientDisconnect
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
T = TypeVar("T")


async def unless_disconnected(receive: Receive, work: Awaitable[T]) -> T:
    """Await `work` (the request body already read), cancelling it if the client hangs up first;
    then raise ClientDisconnect. One watcher task, no task group: this is on every request."""
    current = asyncio.current_task()
    gone = asyncio.Event()

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()
        current.cancel()

    watcher = asyncio.create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if gone.is_set() and current.uncancel() == 0:
            raise ClientDisconnect() from None
        raise
    finally:
        watcher.cancel()


class RelayStream(StreamingResponse):
    """SSE out as chunks arrive; a client that hangs up cancels the relay at once."""

    def __init__(self, content, headers: dict[str, str] | None = None):
        super().__init__(content, media_type="text/event-stream", headers={**SSE_HEADERS, **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await unless_disconnected(receive, self.stream_response(send))
        except (ClientDisconnect, OSError):
            pass  # the client is gone; the body's own `finally` has accounted for it
        finally:
            await self.body_iterator.aclose()
