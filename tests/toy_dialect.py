"""A second dialect for tests, written the way README's "Adding a dialect" says: a small module
that translates (its own request shape, SSE event names and error envelope) around the core. It is
served next to the OpenAI dialect by `python tests/toy_dialect.py --config C --port P`: the real
edge, app and services, with this one extra dialect handed to the edge."""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncGenerator

import orjson
from pydantic import BaseModel, ConfigDict, Field

from proxy.core import Answer, Inference, Stream
from proxy.dialects.base import Dialect, Endpoint, Event, validate
from proxy.errors import KeystileError


class ToyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    prompt: str = Field(min_length=1)
    stream: bool = False


class Toy(Dialect):
    name = "toy"
    prefixes = ("/toy",)
    endpoints = (Endpoint("/say", "chat", ToyRequest, "Say something, the toy way"),)

    def parse(self, endpoint: Endpoint, body: dict) -> Inference:
        request = validate(ToyRequest, body)
        assert isinstance(request, ToyRequest)
        return Inference({"model": request.model, "messages": [{"role": "user", "content": request.prompt}]},
                         stream=request.stream)

    def answer(self, endpoint: Endpoint, answer: Answer) -> bytes:
        parsed = orjson.loads(answer.body)
        usage = answer.usage
        return orjson.dumps({"said": parsed["choices"][0]["message"]["content"],
                             "tokens": [usage.prompt_tokens, usage.completion_tokens] if usage else None})

    async def events(self, endpoint: Endpoint, request: Inference, stream: Stream) -> AsyncGenerator[Event, None]:
        async for chunk in stream:
            parsed = orjson.loads(chunk.data)  # a translating dialect parses each chunk itself
            for choice in parsed.get("choices") or []:
                text = (choice.get("delta") or {}).get("content")
                if text:
                    yield b"word", orjson.dumps({"text": text})
            if chunk.usage is not None:
                yield b"tokens", orjson.dumps([chunk.usage.prompt_tokens, chunk.usage.completion_tokens])
        yield b"end", b"{}"

    def error(self, err: KeystileError) -> bytes:
        return orjson.dumps({"oops": {"kind": err.type, "why": err.message}})

    def stream_error(self, err: KeystileError) -> Event:
        return b"oops", self.error(err)


def main() -> None:
    import uvicorn

    from proxy.app import create_app
    from proxy.edge.asgi import Edge
    from proxy.settings import Settings

    args = argparse.ArgumentParser()
    args.add_argument("--config", required=True)
    args.add_argument("--port", type=int, required=True)
    parsed = args.parse_args()
    os.environ["KEYSTILE_CONFIG"] = parsed.config
    app = create_app(Settings())
    uvicorn.run(Edge(app, [*app.state.dialects, Toy()]), host="127.0.0.1", port=parsed.port, log_level="warning")


if __name__ == "__main__":
    main()
