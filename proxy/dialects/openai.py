"""OpenAI's inference routes (`/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`, also
at the root and under `/openai/v1`): the core speaks this format, so bodies are validated and relayed as they are,
answers and chunks as bytes, never parsed again."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from ..core import Gateway, Inference, Stream
from ..domain import Principal
from ..protocol.openai import ChatRequest, CompletionRequest, EmbeddingRequest, ImageRequest, ModerationRequest
from .base import Dialect, Endpoint, Event, Incoming, Reply, validate
from .several import names_several, several

DONE: Event = (None, b"[DONE]")


class OpenAI(Dialect):
    name = "openai"
    # The root: LiteLLM serves these without /v1 too (an SDK's base_url without it is common);
    # the last: serverless endpoints' (seed 000).
    prefixes = ("/v1", "", "/openai/v1", "/v2/{endpoint_id}/openai/v1")
    endpoints = (
        Endpoint("/chat/completions", "chat", ChatRequest, "Chat completion (JSON or SSE stream)"),
        Endpoint("/completions", "completions", CompletionRequest, "Text completion (JSON or SSE stream)"),
        Endpoint("/embeddings", "embeddings", EmbeddingRequest, "Embeddings"),
        Endpoint("/images/generations", "images", ImageRequest, "Image generation (relayed to OpenAI-compatible "
                 "upstreams and litellm providers)"),
        Endpoint("/moderations", "moderations", ModerationRequest, "Moderation (relayed to OpenAI-compatible "
                 "upstreams and litellm providers)"),
    )

    async def serve(self, gateway: Gateway, principal: Principal, endpoint: Endpoint, incoming: Incoming,
                    body: dict) -> Reply:
        if endpoint.operation == "chat" and names_several(body):  # LiteLLM's `"model": "a, b"`
            return await several(self, gateway, principal, endpoint, incoming, body)
        return await super().serve(gateway, principal, endpoint, incoming, body)

    def parse(self, endpoint: Endpoint, body: dict) -> Inference:
        validate(endpoint.model, body)  # the client's own dict goes on: fields we do not name pass through
        return Inference(body, stream=body.get("stream") is True)

    async def events(self, endpoint: Endpoint, request: Inference, stream: Stream) -> AsyncGenerator[Event, None]:
        include_usage = bool((request.body.get("stream_options") or {}).get("include_usage"))
        async for chunk in stream:
            if chunk.usage_only and not include_usage:
                continue  # the usage the core asked the upstream for; this client did not
            if include_usage and chunk.usage is None and chunk.data.endswith(b"}") and b'"usage"' not in chunk.data:
                # OpenAI's contract: every chunk but the final usage chunk says `"usage": null`.
                yield None, chunk.data[:-1] + b',"usage":null}'
                continue
            yield None, chunk.data
        yield DONE


DIALECT = OpenAI()
