"""Every provider that is not OpenAI-compatible (Anthropic, Gemini, Bedrock, Azure, ...) through the
litellm SDK, imported only when such a model is configured.

litellm is told to use its bundled cost map and to keep telemetry off, so importing it reaches no network.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import os
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

import orjson

from . import errors
from .base import Chunk, Completion, Remote, Usage, answer_id
from .openai_tokenizer import OpenAITokenizers


def import_litellm() -> ModuleType:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_TELEMETRY", "False")
    litellm = importlib.import_module("litellm")
    litellm.telemetry = False
    litellm.drop_params = True
    litellm.suppress_debug_info = True
    return litellm


_SAMPLING = ("temperature", "top_p", "n", "stop", "max_tokens", "presence_penalty", "frequency_penalty",
             "logit_bias", "logprobs", "user", "seed", "stream", "stream_options")
CLIENT_FIELDS = {
    "acompletion": frozenset(_SAMPLING + (
        "messages", "max_completion_tokens", "top_logprobs", "response_format", "tools", "tool_choice",
        "parallel_tool_calls", "functions", "function_call", "reasoning_effort", "modalities", "audio",
        "prediction", "service_tier", "web_search_options", "thinking", "top_k")),
    "atext_completion": frozenset(_SAMPLING + ("prompt", "suffix", "echo", "best_of")),
    "aembedding": frozenset(("input", "encoding_format", "dimensions", "user")),
    "arerank": frozenset(("query", "documents", "top_n", "return_documents", "rank_fields",
                          "max_chunks_per_doc", "max_tokens_per_doc")),
    "aimage_generation": frozenset(("prompt", "n", "size", "quality", "style", "response_format", "user",
                                    "background", "moderation", "output_compression", "output_format")),
    "amoderation": frozenset(("input",)),
}
"""What of a client's body reaches litellm, per call. litellm also takes its own arguments from the same
keyword list (`api_base`, `api_key`, `base_url`, `extra_headers`, cloud credentials, callbacks); a client
that could set them would have the deployment's credentials sent wherever it likes, so everything not
named here is dropped."""


def _translate(litellm: ModuleType, exc: Exception) -> errors.BackendError:
    status = getattr(exc, "status_code", None)
    message = str(getattr(exc, "message", None) or exc)[:500]
    if isinstance(exc, (litellm.Timeout, asyncio.TimeoutError)):
        return errors.UpstreamTimeout(message)
    if isinstance(exc, litellm.APIConnectionError):
        return errors.UpstreamUnreachable(message)
    if isinstance(status, int) and status >= 400:
        return errors.UpstreamHTTPError(message, status=status)
    return errors.UpstreamHTTPError(message, status=502)


def _vector_size(embedding: Any) -> int | None:
    """The length of an embedding as floats or as base64-packed float32."""
    if isinstance(embedding, list):
        return len(embedding)
    if isinstance(embedding, str):
        return len(base64.b64decode(embedding)) // 4
    return None


class LiteLLMBackend(Remote):

    def __init__(self, public_name: str, model: str, *, timeout: float, params: dict[str, Any]):
        self.public_name = public_name
        self.model = model
        self._module: ModuleType | None = None
        self._timeout = timeout
        self._params = {k: v for k, v in params.items() if v is not None}
        self._tiktoken = OpenAITokenizers()

    @property
    def _litellm(self) -> ModuleType:
        """litellm, imported on first use (seconds of import; building a backend must stay cheap)."""
        if self._module is None:
            self._module = import_litellm()
        return self._module

    def _body(self, fn: str, body: dict) -> dict:
        allowed = CLIENT_FIELDS[fn]
        return {**{k: v for k, v in body.items() if k in allowed}, **self._params, "model": self.model,
                "timeout": self._timeout}

    def _dump(self, obj: Any) -> tuple[bytes, dict]:
        data = obj.model_dump(exclude_none=True) if hasattr(obj, "model_dump") else dict(obj)
        data.pop("_hidden_params", None)
        data["model"] = self.public_name
        return orjson.dumps(data, default=str), data

    async def _call(self, fn: str, body: dict) -> Completion:
        try:
            result = await getattr(self._litellm, fn)(**self._body(fn, body))
        except errors.BackendError:
            raise
        except Exception as exc:  # litellm's own tree, translated at this boundary
            raise _translate(self._litellm, exc) from exc
        raw, data = self._dump(result)
        return Completion(raw, Usage.from_openai(data.get("usage")), answer_id(data))

    async def _stream(self, fn: str, body: dict) -> AsyncIterator[Chunk]:
        try:
            args = {**self._body(fn, body), "stream": True, "stream_options": {"include_usage": True}}
            stream = await getattr(self._litellm, fn)(**args)
            async for part in stream:
                yield Chunk.parsed(*self._dump(part))
        except errors.BackendError:
            raise
        except Exception as exc:
            raise _translate(self._litellm, exc) from exc

    async def chat(self, body: dict) -> Completion:
        return await self._call("acompletion", body)

    def chat_stream(self, body: dict) -> AsyncIterator[Chunk]:
        return self._stream("acompletion", body)

    async def complete(self, body: dict) -> Completion:
        return await self._call("atext_completion", body)

    def complete_stream(self, body: dict) -> AsyncIterator[Chunk]:
        return self._stream("atext_completion", body)

    async def embed(self, body: dict) -> Completion:
        """`dimensions` goes to the provider; litellm drops it for one that does not take it (drop_params),
        so an answer of another size is refused rather than passed on as if it were the one asked for."""
        answer = await self._call("aembedding", body)
        wanted = body.get("dimensions")
        if wanted is not None:
            sizes = {_vector_size(item.get("embedding")) for item in orjson.loads(answer.body).get("data") or ()}
            if sizes != {wanted}:
                raise errors.NotSupported(f"{self.public_name}: the provider does not shorten embeddings to "
                                          f"`dimensions` ({wanted}); it answered with {sorted(map(str, sizes))}")
        return answer

    async def rerank(self, body: dict) -> Completion:
        return await self._call("arerank", body)

    async def images(self, body: dict) -> Completion:
        return await self._call("aimage_generation", body)

    async def moderate(self, body: dict) -> Completion:
        return await self._call("amoderation", body)

    async def tokenize(self, text: str) -> list[int]:
        return list(self._litellm.encode(model=self.model, text=text))

    async def encode(self, body: dict) -> Completion:
        """tiktoken (offline) for an OpenAI model behind another provider (Azure's `gpt-4o`, say);
        NotSupported for the rest: litellm's tokenizers for them are approximations or downloads."""
        return await self._tiktoken.encode(self._known_model(), body)

    async def decode(self, body: dict) -> Completion:
        return await self._tiktoken.decode(self._known_model(), body)

    def _known_model(self) -> str:
        name = self.model.split("/", 1)[-1]
        if not self._tiktoken.knows(name):
            raise errors.NotSupported(f"{self.public_name}: no tokenizer is known for {self.model}; tokenize and "
                                      "detokenize work on local models, vLLM upstreams and OpenAI models")
        return name

    async def health(self) -> bool:
        return True

    async def aclose(self) -> None:
        """litellm keeps its own clients; nothing of ours to close."""
