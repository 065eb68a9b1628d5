"""A small real OpenAI-compatible upstream (uvicorn on a free port) that misbehaves in the ways the
core must bound, chosen by the requested model name:

- `runaway*`: ignores `max_tokens` and `stop`: RUNAWAY_TOKENS one-word chunks (" w1", " w2", …)
  and usage saying so; JSON answers alike.
- `prefill-<s>`: a long prefill: nothing at all for `s` seconds, then a short answer (3 chunks).
- `prefillfail-<s>`: nothing for `s` seconds, then a 500.
- `cached*` and `gpt-4o*` (a model whose cache price litellm's price map knows): report cache
  reads as OpenAI does (`usage.prompt_tokens_details.cached_tokens`).
- `stopword*`: writes "alpha beta STOP gamma delta" whatever `stop` says (the gateway applies
  stop sequences on the translated Anthropic path itself).

Every request body is recorded."""

from __future__ import annotations

import asyncio

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from .upstream import Served, free_port

RUNAWAY_TOKENS = 100
CACHED_USAGE = {"prompt_tokens": 1000, "completion_tokens": 3, "total_tokens": 1003,
                "prompt_tokens_details": {"cached_tokens": 800}}
STOPWORD_TEXT = "alpha beta STOP gamma delta"


def _words(model: str) -> list[str]:
    if model.startswith("runaway"):
        return [f" w{i}" for i in range(1, RUNAWAY_TOKENS + 1)]
    if model.startswith("stopword"):
        return [(" " if i else "") + w for i, w in enumerate(STOPWORD_TEXT.split(" "))]
    return ["one", " two", " three"]


class RunawayUpstream(Served):
    def __init__(self) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.requests: list[dict] = []
        self.serve(Starlette(routes=[Route("/v1/chat/completions", self.completion, methods=["POST"]),
                                     Route("/v1/completions", self.completion, methods=["POST"])]))

    async def completion(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        self.requests.append(body)
        model = str(body["model"])
        chat = request.url.path.endswith("/chat/completions")
        if model.startswith(("prefill-", "prefillfail-")):
            await asyncio.sleep(float(model.partition("-")[2]))
            if model.startswith("prefillfail"):
                return Response(orjson.dumps({"error": {"message": "upstream fell over", "type": "server_error"}}),
                                status_code=500, media_type="application/json")
        words = _words(model)
        usage = CACHED_USAGE if model.startswith(("cached", "gpt-4o")) else \
            {"prompt_tokens": 9, "completion_tokens": len(words), "total_tokens": 9 + len(words)}
        if body.get("stream"):
            return StreamingResponse(self._stream(body, model, chat, words, usage), media_type="text/event-stream")
        text = "".join(words)
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"} if chat \
            else {"index": 0, "text": text, "finish_reason": "stop"}
        return Response(orjson.dumps({"id": "r1", "object": "chat.completion" if chat else "text_completion",
                                      "created": 1, "model": model, "choices": [choice], "usage": usage}),
                        media_type="application/json")

    async def _stream(self, body: dict, model: str, chat: bool, words: list[str], usage: dict):
        kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(**fields: object) -> bytes:
            return b"data: " + orjson.dumps({"id": "r1", "object": kind, "created": 1, "model": model,
                                             **fields}) + b"\n\n"
        for word in words:
            yield chunk(choices=[{"index": 0, "delta": {"content": word}, "finish_reason": None} if chat
                                 else {"index": 0, "text": word, "finish_reason": None}])
        yield chunk(choices=[{"index": 0, "delta": {}, "finish_reason": "stop"} if chat
                             else {"index": 0, "text": "", "finish_reason": "stop"}])
        if (body.get("stream_options") or {}).get("include_usage"):
            yield chunk(choices=[], usage=usage)
        yield b"data: [DONE]\n\n"
