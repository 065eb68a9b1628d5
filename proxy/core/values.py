"""What goes into the core and what comes out: plain values, no HTTP.

Requests and answers are OpenAI-shaped (the backends' own language, backends/base.py): a dialect
that speaks another wire format translates its request into an `Inference` and the core's
`Answer` or `Stream` back into its own shape; the OpenAI dialect relays the bytes untouched."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from backends.base import Chunk, Usage

Operation = Literal["chat", "completions", "embeddings", "rerank", "messages", "count_tokens", "fim", "tokenize",
                    "detokenize", "images", "moderations"]
"""What is asked of a model: a chat completion, a text completion, embeddings, a reranking of
documents, an Anthropic Messages request (or its token count) or a Mistral fill-in-the-middle
request relayed as it is to a backend that takes them (`relays` has "anthropic", "fim"), its
tokenizer's work (text or a chat to token ids, ids to text), an image generation or a moderation."""

STREAMABLE: frozenset[Operation] = frozenset({"chat", "completions", "messages", "fim"})
RELAYED: frozenset[Operation] = frozenset({"messages", "fim"})
"""Operations whose body goes to the backend as the client sent it (nothing added)."""


@dataclass(slots=True)
class Inference:
    """One request to the core. `body` is an OpenAI-shaped request body with the public model name
    (`body["model"]`); it goes to the backend as it is. `stream` asks for chunks (chat and
    completions only). `route` names the request in its usage record (e.g. `/v1/chat/completions`);
    `request_id` is the id its usage record and its answer's `x-request-id` carry (the edge's; the
    core makes one when it is empty)."""

    body: dict
    stream: bool = False
    route: str = ""
    request_id: str = ""


@dataclass(slots=True)
class Answer:
    """A completed call: the OpenAI-shaped JSON body (model = the public name), its usage, and
    the x-ratelimit-* headers of the limits that admitted it (raw ASGI pairs)."""

    body: bytes
    usage: Usage | None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


class Stream:
    """A streamed call: an async iterator of Chunks (each one OpenAI-shaped `data:` payload, with
    the usage where a chunk carries it), and the x-ratelimit-* headers. The call is settled and
    recorded when the iteration ends or fails, or when the stream is closed: whoever holds it calls
    `aclose()` in a `finally` (also if it never read a chunk: that is a client gone, a 499). A
    failure after the first chunk is raised from the iteration (a BackendError), for the dialect to
    render in its own way."""

    __slots__ = ("_chunks", "_abandoned", "_usage", "headers")

    def __init__(self, chunks: AsyncGenerator[Chunk, None], headers: list[tuple[bytes, bytes]],
                 abandoned: Callable[[], Awaitable[None]] | None = None,
                 usage: Callable[[], Usage | None] | None = None):
        self._chunks = chunks
        self._abandoned = abandoned
        self._usage = usage
        self.headers = headers

    def usage(self) -> Usage | None:
        """The usage the call is charged: once the iteration has ended or the stream is closed,
        the upstream's, or the count made for a stream that did not report one (a stream cut short
        by its reader included); None before that if no usage chunk came yet."""
        return self._usage() if self._usage is not None else None

    def __aiter__(self) -> AsyncGenerator[Chunk, None]:
        return self._chunks

    async def aclose(self) -> None:
        await self._chunks.aclose()
        if self._abandoned is not None:
            await self._abandoned()
