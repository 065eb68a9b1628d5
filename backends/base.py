"""The Backend protocol every adapter implements, and the small value types they exchange.

Requests arrive as OpenAI-shaped dicts whose `model` is already the upstream's name. Answers leave
as OpenAI-shaped JSON bytes whose `model` is the public name, so the proxy can relay them as they are.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(slots=True)
class Usage:
    """Tokens of one call. `prompt_tokens` counts every prompt token, the cached ones too:
    `cache_read_tokens` of them were read from the provider's prompt cache, `cache_creation_tokens`
    written to it (each priced apart where the price map knows how)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def from_openai(cls, usage: dict | None) -> Usage | None:
        """OpenAI's usage object; cache reads from `prompt_tokens_details.cached_tokens`."""
        if not isinstance(usage, dict):
            return None
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        return cls(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0),
                   cached if isinstance(cached, int) and cached > 0 else 0)


ID_MAX = 255
_FIRST_ID = re.compile(rb'"id"\s*:\s*"([^"\\]{1,%d})"' % ID_MAX)


def answer_id(obj: dict) -> str | None:
    """An answer's own `id` (`chatcmpl-…`, `cmpl-…`, `msg_…`), if it has a usable one."""
    value = obj.get("id")
    return value if isinstance(value, str) and 0 < len(value) <= ID_MAX else None


def chunk_id(data: bytes) -> str | None:
    """The `id` of a stream from its first chunk's JSON, without parsing it: the first `"id"` in
    the chunk (OpenAI's chunks start with it; Anthropic's message_start has the message's first)."""
    found = _FIRST_ID.search(data)
    return found.group(1).decode("utf-8", "replace") if found else None


@dataclass(slots=True)
class Completion:
    """A whole answer: the JSON body to send, the usage it reported and its `id` (`chatcmpl-…`)."""

    body: bytes
    usage: Usage | None
    id: str | None = None


@dataclass(slots=True)
class Chunk:
    """One streamed event: the JSON of one `data:` line, the usage if this chunk carries it, and
    whether it carries nothing else (`choices: []`, sent only to clients that asked for usage)."""

    data: bytes
    usage: Usage | None = None
    usage_only: bool = False

    @classmethod
    def parsed(cls, data: bytes, obj: object) -> Chunk:
        """A chunk from its JSON and the object it parses to (decided on the value, not the bytes:
        upstreams write `"choices": []` with or without spaces)."""
        if not isinstance(obj, dict):
            return cls(data)
        usage = Usage.from_openai(obj.get("usage"))
        return cls(data, usage, usage is not None and not obj.get("choices"))


class Backend(Protocol):
    """One deployment's way to reach a model: everything the gateway calls on a backend.

    `local` says the model runs on this host in a process the backend manages (llama.cpp): such a
    backend loads after `start()`, `status()` says how it is (`{"state": "loading" | "ready" |
    "restarting" | "failed" | "stopped", ...}`, what /health and readiness show) and `retry()` starts
    a crashed worker now (False when none is awaited). A remote backend's `start()` does nothing,
    its status is `{"state": "ready"}` and `retry()` is False."""

    local: bool

    async def start(self) -> None: ...

    def status(self) -> dict[str, Any]: ...

    def retry(self) -> bool: ...

    async def chat(self, body: dict) -> Completion: ...

    def chat_stream(self, body: dict) -> AsyncIterator[Chunk]: ...

    async def complete(self, body: dict) -> Completion: ...

    def complete_stream(self, body: dict) -> AsyncIterator[Chunk]: ...

    async def embed(self, body: dict) -> Completion: ...

    async def rerank(self, body: dict) -> Completion:
        """`{model, query, documents, top_n}` -> the upstream's rerank answer (results with index and
        relevance_score, in its own shape); NotSupported where the backend cannot rerank."""
        ...

    async def tokenize(self, text: str) -> list[int]:
        """The token ids of `text` (for counting); NotSupported where no tokenizer is known."""
        ...

    async def encode(self, body: dict) -> Completion:
        """vLLM's /tokenize: `{model, prompt, add_special_tokens}` or `{model, messages, tools}` (rendered
        with the model's chat template) -> `{count, max_model_len, tokens, token_strs}` (token_strs
        null where the tokenizer does not say); NotSupported where the backend has no tokenizer."""
        ...

    async def decode(self, body: dict) -> Completion:
        """vLLM's /detokenize: `{model, tokens}` -> `{prompt}`; NotSupported as `encode`."""
        ...
    async def images(self, body: dict) -> Completion:
        """OpenAI's image generation (`{model, prompt, n, size, ...}` -> `{created, data: [...]}`);
        NotSupported where the backend cannot make images."""
        ...

    async def moderate(self, body: dict) -> Completion:
        """OpenAI's moderation (`{model, input}` -> `{id, model, results: [...]}`); NotSupported where
        the backend cannot classify."""
        ...

    async def health(self) -> bool: ...

    def describe(self) -> dict[str, Any]:
        """What is known of the model itself (a local GGUF file's metadata once loaded; {} for a
        remote model)."""
        ...

    async def aclose(self) -> None: ...


class Remote:
    """The lifecycle of a model served by another process or host (the Backend protocol's `local`,
    start, status, retry and describe): nothing to start or restart here, ready as far as this
    gateway knows (reachability is `health()`'s), nothing known beyond its name."""

    local = False

    async def start(self) -> None:
        """Nothing to start: the model is remote."""

    def status(self) -> dict[str, Any]:
        return {"state": "ready"}

    def retry(self) -> bool:
        return False

    def describe(self) -> dict[str, Any]:
        return {}

