"""A small real Anthropic Messages upstream for tests (uvicorn on a free port): `claude-ok*`
answers (JSON, or Anthropic's SSE events with usage in message_start and message_delta), and
`claude-overloaded` (529), `claude-too-long` (400) and `claude-limited` (429, Retry-After: 7)
answer Anthropic's own errors. A request whose system blocks have `cache_control` reports CACHE_WRITE
tokens written to the cache. `/v1/messages/count_tokens` answers `{"input_tokens"}` (the request's
characters / 4). Every request's body and headers are recorded."""

from __future__ import annotations

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from .upstream import Served, free_port

ERRORS = {
    "claude-overloaded": (529, "overloaded_error", "Overloaded", {}),
    "claude-too-long": (400, "invalid_request_error", "prompt is too long: 250000 tokens > 200000 maximum", {}),
    "claude-limited": (429, "rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit",
                       {"retry-after": "7"}),
}
USAGE = {"input_tokens": 11, "cache_read_input_tokens": 5, "cache_creation_input_tokens": 0, "output_tokens": 1}
CACHE_WRITE = 20
"""cache_creation_input_tokens reported for a request whose system blocks have `cache_control`."""


class FakeAnthropic(Served):
    def __init__(self) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.serve(Starlette(routes=[Route("/v1/messages", self.messages, methods=["POST"]),
                                     Route("/v1/messages/count_tokens", self.count_tokens, methods=["POST"])]))

    async def count_tokens(self, request: Request) -> Response:
        raw = await request.body()
        self.requests.append(orjson.loads(raw))
        self.headers.append(dict(request.headers))
        return Response(orjson.dumps({"input_tokens": len(raw) // 4}), media_type="application/json")

    async def messages(self, request: Request) -> Response:
        raw = await request.body()
        body = orjson.loads(raw)
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        model = body["model"]
        if model in ERRORS:
            status, kind, message, headers = ERRORS[model]
            return Response(orjson.dumps({"type": "error", "error": {"type": kind, "message": message}}),
                            status_code=status, headers=headers, media_type="application/json")
        writes = isinstance(body.get("system"), list) and any("cache_control" in b for b in body["system"])
        usage = {**USAGE, "cache_creation_input_tokens": CACHE_WRITE} if writes else USAGE
        message = {"id": "msg_up_1", "type": "message", "role": "assistant", "model": model,
                   "content": [{"type": "text", "text": "Hello from Claude."}], "stop_reason": "end_turn",
                   "stop_sequence": None, "usage": {**usage, "output_tokens": 6}}
        if not body.get("stream"):
            return Response(orjson.dumps(message), media_type="application/json")
        return StreamingResponse(self._events(message, usage), media_type="text/event-stream")

    async def _events(self, message: dict, usage: dict):
        def event(data: dict) -> bytes:
            return b"event: " + data["type"].encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
        yield event({"type": "message_start", "message": {**message, "content": [], "stop_reason": None,
                                                           "usage": usage}})
        yield event({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
        yield event({"type": "ping"})
        for piece in ("Hello", " from", " Claude."):
            yield event({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}})
        yield event({"type": "content_block_stop", "index": 0})
        yield event({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                     "usage": {"output_tokens": 6}})
        yield event({"type": "message_stop"})
