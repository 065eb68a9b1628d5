"""Fill-in-the-middle in Mistral's shape (`POST /v1/fim/completions`), as Continue's `mistral`
provider (autocomplete) and Mistral's SDKs send it: `{model, prompt, suffix, max_tokens, stream, …}`
-> a chat.completion (`choices[0].message.content`), or SSE chunks with `choices[0].delta.content`.

To a model whose deployments all serve this route themselves (`mistral/…`: Codestral) the request
is relayed as it is. Otherwise it runs as a text completion with `suffix` on the core: a local
model builds its prompt from its own FIM tokens (a clear 400 when the GGUF has none,
backends/llamacpp_tokens.py); an OpenAI-compatible upstream gets `suffix` as it is. The answer is
translated back, chunk by chunk.
A stream's usage-only chunk (`choices: []`) goes only to a client that asked for it with
`stream_options.include_usage`: Continue reads `choices[0]` of every chunk."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from typing import Annotated

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from ..core import Answer, Gateway, Inference, Stream
from ..domain import Principal
from ..protocol.openai import Penalty, Probability, Stop, StreamOptions, TokenCount
from .base import Dialect, Endpoint, Event, Incoming, Reply, read_json, validate

DONE: Event = (None, b"[DONE]")
PASSED = ("temperature", "top_p", "stop", "presence_penalty", "frequency_penalty", "stream_options", "user")
"""Fields that mean the same on a text completion."""


class FimRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: StrictStr = Field(min_length=1)
    prompt: StrictStr
    suffix: StrictStr | None = None
    max_tokens: TokenCount | None = None
    max_completion_tokens: TokenCount | None = None
    min_tokens: Annotated[StrictInt, Field(ge=0)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Probability | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    stop: Stop = None
    random_seed: StrictInt | None = None
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None


RELAY = Endpoint("/fim/completions", "fim", FimRequest)
"""The same route, to a backend that takes it as it is."""


class Fim(Dialect):
    name = "fim"
    prefixes = ("/v1",)
    endpoints = (Endpoint("/fim/completions", "completions", FimRequest,
                          "Fill in the middle: the text between `prompt` and `suffix` (Mistral's shape)"),)

    async def handle(self, gateway: Gateway, principal: Principal, endpoint: Endpoint, incoming: Incoming) -> Reply:
        body = await read_json(gateway, principal, incoming)
        model = body.get("model")
        relayed = isinstance(model, str) and gateway.relays(principal, model, "fim")
        return await self.serve(gateway, principal, RELAY if relayed else endpoint, incoming, body)

    def parse(self, endpoint: Endpoint, body: dict) -> Inference:
        validate(FimRequest, body)
        if endpoint.operation == "fim":
            return Inference(body, stream=body.get("stream") is True)
        completion = {"model": body["model"], "prompt": body["prompt"],
                      **{k: body[k] for k in PASSED if body.get(k) is not None}}
        if body.get("suffix") is not None:
            completion["suffix"] = body["suffix"]
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        if max_tokens is not None:
            completion["max_tokens"] = max_tokens
        if body.get("random_seed") is not None:
            completion["seed"] = body["random_seed"]
        return Inference(completion, stream=body.get("stream") is True)

    def render(self, endpoint: Endpoint, request: Inference, answer: Answer) -> bytes:
        if endpoint.operation == "fim":
            return answer.body
        data = orjson.loads(answer.body)
        choices = [{"index": c.get("index", 0), "finish_reason": c.get("finish_reason"),
                    "message": {"role": "assistant", "content": c.get("text") or "", "tool_calls": None}}
                   for c in data.get("choices") or ()]
        return orjson.dumps({"id": data.get("id") or "fim", "object": "chat.completion",
                             "created": data.get("created") or int(time.time()), "model": data.get("model"),
                             "choices": choices, "usage": data.get("usage")})

    async def events(self, endpoint: Endpoint, request: Inference, stream: Stream) -> AsyncGenerator[Event, None]:
        include_usage = bool((request.body.get("stream_options") or {}).get("include_usage"))
        async for chunk in stream:
            if chunk.usage_only and not include_usage:
                continue
            if endpoint.operation == "fim":
                yield None, chunk.data
                continue
            data = orjson.loads(chunk.data)
            choices = [{"index": c.get("index", 0), "delta": {"role": "assistant", "content": c.get("text") or ""},
                        "finish_reason": c.get("finish_reason")} for c in data.get("choices") or ()]
            out = {"id": data.get("id") or "fim", "object": "chat.completion.chunk", "created": data.get("created"),
                   "model": data.get("model"), "choices": choices}
            if data.get("usage") is not None:
                out["usage"] = data["usage"]
            yield None, orjson.dumps(out)
        yield DONE


DIALECT = Fim()
