"""SSE relay response: chunks go out as they arrive, and a client that hangs up cancels the
relay at once (its generator's `finally` settles limits and accounting), whatever the ASGI server."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import anyio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
T = TypeVar("T")


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work` (the body already read), cancelling it if the client hangs up first;
    then raise ClientDisconnect, so limits are freed and the request is accounted as abandoned."""
    current = asyncio.current_task()
    gone = asyncio.Event()

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
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
    def __init__(self, content, headers: dict[str, str] | None = None):
        super().__init__(content, media_type="text/event-stream", headers={**SSE_HEADERS, **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as group:
            async def watch() -> None:
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()

            group.start_soon(watch)
            try:
                await self.stream_response(send)
            except OSError as exc:
                raise ClientDisconnect() from exc
            finally:
                group.cancel_scope.cancel()
                await self.body_iterator.aclose()
