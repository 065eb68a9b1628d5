"""SSE relay response: chunks go out as they arrive, and a client that hangs up cancels the
relay at once (its generator's `finally` settles limits and accounting), whatever the ASGI server."""

from __future__ import annotations

import anyio
from starlette.requests import ClientDisconnect
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


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
