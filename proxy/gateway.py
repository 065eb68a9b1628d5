"""The inference path every route and dialect shares: auth'd caller -> model check -> router ->
backend -> response. Streams are relayed chunk by chunk as SSE."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from starlette.responses import Response, StreamingResponse

from backends.base import Backend, Chunk
from backends.errors import BackendError
from backends.router import Router

from .auth.principal import Principal
from .errors import Forbidden, NotFound, as_keystile, error_body

Kind = Literal["chat", "completions", "embeddings"]

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass(frozen=True, slots=True)
class Operation:
    call: str
    stream: str | None


OPERATIONS: dict[Kind, Operation] = {
    "chat": Operation("chat", "chat_stream"),
    "completions": Operation("complete", "complete_stream"),
    "embeddings": Operation("embed", None),
}


def _usage_only(chunk: Chunk) -> bool:
    return chunk.usage is not None and b'"choices":[]' in chunk.data


class Gateway:
    def __init__(self, router: Router):
        self.router = router

    def resolve_model(self, principal: Principal, requested: str) -> str:
        name = principal.resolve(requested)
        if name not in self.router:
            raise NotFound(f"model '{requested}' does not exist or is not served here")
        if not principal.may_use(name):
            raise Forbidden(f"this key may not use model '{requested}'", code="model_not_allowed")
        return name

    async def handle(self, principal: Principal, kind: Kind, body: dict) -> Response:
        name = self.resolve_model(principal, body["model"])
        op = OPERATIONS[kind]
        if op.stream and body.get("stream"):
            return await self._stream(name, op.stream, body)
        _, result = await self.router.call(name, lambda b: getattr(b, op.call)(body))
        return Response(result.body, media_type="application/json")

    async def _stream(self, name: str, method: str, body: dict) -> Response:
        options = body.get("stream_options") or {}
        client_wants_usage = bool(options.get("include_usage"))
        upstream_body = {**body, "stream_options": {**options, "include_usage": True}}

        def start(backend: Backend):
            return getattr(backend, method)(upstream_body)

        _, stream = await self.router.open_stream(name, start)
        return StreamingResponse(self._sse(stream, client_wants_usage), media_type="text/event-stream",
                                 headers=SSE_HEADERS)

    async def _sse(self, stream: AsyncIterator[Chunk], include_usage: bool) -> AsyncIterator[bytes]:
        try:
            async for chunk in stream:
                if not include_usage and _usage_only(chunk):
                    continue
                yield b"data: " + chunk.data + b"\n\n"
        except BackendError as exc:
            # Bytes have gone out already: the failure travels as an error event the SDKs raise.
            yield b"data: " + error_body(as_keystile(exc)) + b"\n\n"
            return
        finally:
            await stream.aclose()
        yield b"data: [DONE]\n\n"
