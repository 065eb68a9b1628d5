"""Relaying while watching the client: work in flight is cancelled the moment the client hangs up
(its `finally` blocks settle limits and accounting), whatever the ASGI server does."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import ClientDisconnect
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
T = TypeVar("T")
WATCH_AFTER_S = 0.05


async def unless_disconnected(receive: Receive, work: Awaitable[T]) -> T:
    """Await `work` (the request body already read), cancelling it if the client hangs up first;
    then raise ClientDisconnect. This is on every request, so the watcher task is only started
    once the work has run for WATCH_AFTER_S: quick answers never pay for one, and a hang-up is
    noticed at most that much later."""
    current = asyncio.current_task()
    watcher: asyncio.Task | None = None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        current.cancel()

    def start() -> None:
        nonlocal watcher
        watcher = asyncio.create_task(watch())

    timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, start)
    try:
        return await work
    except asyncio.CancelledError:
        if gone and current.uncancel() == 0:
            raise ClientDisconnect() from None
        raise
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()


class JSONAnswer(Response):
    """A JSON body that is bytes already, with raw ASGI headers: a Response without Starlette's
    per-header encoding, for the answer every successful JSON request gets."""

    media_type = "application/json"

    def __init__(self, body: bytes, headers: list[tuple[bytes, bytes]] = ()):
        self.status_code = 200
        self.background = None
        self.body = body
        self.raw_headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)), *headers]


class RelayStream(StreamingResponse):
    """SSE out as chunks arrive; a client that hangs up cancels the relay at once."""

    def __init__(self, content, headers: list[tuple[bytes, bytes]] = ()):
        super().__init__(content, media_type="text/event-stream", headers=SSE_HEADERS)
        self.raw_headers += headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await unless_disconnected(receive, self.stream_response(send))
        except (ClientDisconnect, OSError):
            pass  # the client is gone; the body's own `finally` has accounted for it
        finally:
            await self.body_iterator.aclose()
