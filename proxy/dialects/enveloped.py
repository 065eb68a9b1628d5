"""The enveloped enterprise API (seed 001): `POST /api/v1/ai/chat/completions`.

- Request: OpenAI's chat body, with its fields in camelCase (`maxTokens`, `topP`, ...) or
  snake_case alike; camelCase names are turned into OpenAI's before validation.
- Answer: `{"code": 200, "msg": "Operation successful", "data": {...chat.completion...}}`.
- Stream: `event:messages` / `data:{chunk}` lines (no space after the colon, as the guide prints
  them), every chunk carrying a running `usage`; the exact usage arrives in the last chunk.
- Errors: `{"code": <HTTP status>, "msg": <message>, "data": null}` with the same HTTP status.

The guide also says OpenAI's SDKs work pointed at `/api/v1/ai`. They do not understand the
envelope, so a request from one (every OpenAI SDK sends `X-Stainless-Lang`) gets the answer
unwrapped; its streams already parse, the SDK reads each `data:` line whatever the event name."""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator

import orjson

from ..core import Gateway, Inference, Stream
from ..core.estimates import estimate_prompt_tokens
from ..domain import Principal
from ..errors import BadRequest, KeystileError
from ..protocol.openai import ChatRequest
from .base import Dialect, Endpoint, Event, Incoming, Reply, validate

MESSAGES = b"messages"
OK_HEAD = b'{"code":200,"msg":"Operation successful","data":'
SDK_HEADER = b"x-stainless-lang"
_CAMEL = re.compile(r"(?<=[a-z0-9])([A-Z])")


def snake_case(body: dict) -> dict:
    """Top-level camelCase keys as OpenAI's snake_case (`maxTokens` -> `max_tokens`); a field given
    both ways is refused, naming both."""
    out: dict = {}
    for key, value in body.items():
        name = _CAMEL.sub(r"_\1", key).lower() if isinstance(key, str) and not key.islower() else key
        if name in out:
            raise BadRequest(f"{key}: given twice (as {key} and {name}); send one", param=key)
        out[name] = value
    return out


class Enveloped(Dialect):
    name = "enveloped"
    prefixes = ("/api/v1/ai",)
    endpoints = (Endpoint("/chat/completions", "chat", ChatRequest,
                          "Chat completion in the {code, msg, data} envelope; camelCase fields accepted"),)

    def parse(self, endpoint: Endpoint, body: dict) -> Inference:
        sent = body
        body = snake_case(body)
        try:
            validate(ChatRequest, body)
        except BadRequest as err:  # name the field as the client sent it (maxTokens, not max_tokens)
            first = (err.param or "").split(".", 1)[0]
            given = next((k for k in sent if k != first and snake_case({k: None}).keys() == {first}), None)
            if given is not None:
                err.message = err.message.replace(first, given, 1)
                err.param = given + (err.param or "")[len(first):]
            raise
        return Inference(body, stream=body.get("stream") is True)

    async def handle(self, gateway: Gateway, principal: Principal, endpoint: Endpoint, incoming: Incoming) -> Reply:
        reply = await super().handle(gateway, principal, endpoint, incoming)
        if reply.events is None and incoming.header(SDK_HEADER) is None:
            reply.body = OK_HEAD + reply.body + b"}"
        return reply

    async def events(self, endpoint: Endpoint, request: Inference, stream: Stream) -> AsyncGenerator[Event, None]:
        prompt = estimate_prompt_tokens(request.body)
        completion = 0
        async for chunk in stream:
            if chunk.usage is not None:
                yield MESSAGES, chunk.data  # the exact count: pass it on as it is
                continue
            data = orjson.loads(chunk.data)
            if any((c.get("delta") or {}).get("content") for c in data.get("choices") or ()):
                completion += 1
            data["usage"] = {"prompt_tokens": prompt, "total_tokens": prompt + completion,
                             "completion_tokens": completion}
            yield MESSAGES, orjson.dumps(data)

    def frame(self, event: Event) -> bytes:
        name, data = event
        return b"event:" + (name or MESSAGES) + b"\ndata:" + data + b"\n\n"

    def error(self, err: KeystileError) -> bytes:
        return orjson.dumps({"code": err.status, "msg": err.message, "data": None})

    def stream_error(self, err: KeystileError) -> Event:
        return b"error", self.error(err)


DIALECT = Enveloped()
