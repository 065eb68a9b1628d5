"""Any OpenAI-compatible HTTP upstream (vLLM, llama.cpp's server, OpenAI, Groq, Together, ...).

Bodies pass through as bytes: the only edit is the `model` field, rewritten to the public name in
answers. Streams are relayed event by event as they arrive, never buffered.
"""

from __future__ import annotations

import contextlib
import email.utils
import re
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from urllib.parse import urlsplit

import orjson

from . import errors
from .base import Chunk, Completion, Remote, Usage, answer_id
from .http import ClientPool, HTTPClientError, Origin, Response, backend_error
from .openai_tokenizer import OpenAITokenizers

# Providers whose API is OpenAI's, and their default base URL (None: api_base is required).
OPENAI_COMPATIBLE: dict[str, str | None] = {
    "openai": "https://api.openai.com/v1",
    "hosted_vllm": None,
    "vllm": None,
    "openai_like": None,
    "llamafile": None,
    "lm_studio": None,
    "groq": "https://api.groq.com/openai/v1",
    "together_ai": "https://api.together.xyz/v1",
    "deepseek": "https://api.deepseek.com/v1",
    "fireworks_ai": "https://api.fireworks.ai/inference/v1",
    "mistral": "https://api.mistral.ai/v1",
    "openrouter": "https://openrouter.ai/api/v1",
    "perplexity": "https://api.perplexity.ai",
}

NATIVE_FIM = frozenset({"mistral"})
"""Providers that serve Mistral's `/fim/completions` themselves (Codestral): fill-in-the-middle
requests are relayed to them as they are, instead of becoming a completion with `suffix`."""

_MODEL_FIELD = re.compile(rb'"model"\s*:\s*"(?:[^"\\]|\\.)*"')
_MAX_ERROR_MESSAGE = 500


async def _sse_data(resp: Response) -> AsyncIterator[bytes]:
    """The `data:` payloads of an SSE body, one per line, as the chunks arrive (blank separators,
    comments and event names skipped)."""
    pending = b""
    async for chunk in resp.chunks():
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            if line.startswith(b"data:"):
                yield line[5:].strip()
    if pending.startswith(b"data:"):
        yield pending[5:].strip()


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header (delay-seconds or an HTTP date) as seconds from now; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _upstream_error(status: int, body: bytes, retry_after: str | None = None) -> errors.UpstreamHTTPError:
    message, code, param = None, None, None
    try:
        parsed = orjson.loads(body)
        err = parsed.get("error", parsed) if isinstance(parsed, dict) else None
        if isinstance(err, dict):
            message, code, param = err.get("message") or err.get("detail"), err.get("code"), err.get("param")
        elif isinstance(err, str):
            message = err
    except orjson.JSONDecodeError:
        pass
    if not isinstance(message, str) or not message:
        message = f"upstream answered HTTP {status}"
    if status in (401, 403):
        message = f"upstream rejected the gateway's credentials (HTTP {status})"
    return errors.UpstreamHTTPError(
        message[:_MAX_ERROR_MESSAGE], status=status,
        code=str(code) if code is not None else None, param=param if isinstance(param, str) else None,
        retry_after=retry_after_seconds(retry_after),
    )


def _object(data: bytes) -> dict:
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise errors.UpstreamHTTPError("the upstream's tokenizer answer is not a JSON object", status=502)
    return parsed


def _tokenize_answer(data: bytes) -> bytes:
    """vLLM's /tokenize answer as it is; llama.cpp server's (`tokens` of `{id, piece}`) in vLLM's shape."""
    parsed = _object(data)
    tokens = parsed.get("tokens")
    if not isinstance(tokens, list):
        raise errors.UpstreamHTTPError("the upstream's /tokenize answer has no tokens", status=502)
    pieces = parsed.get("token_strs")
    if tokens and all(isinstance(t, dict) for t in tokens):
        pieces = [t.get("piece") if isinstance(t.get("piece"), str) else "" for t in tokens]
        tokens = [t.get("id") for t in tokens]
    if not all(isinstance(t, int) for t in tokens):
        raise errors.UpstreamHTTPError("the upstream's /tokenize answer has tokens that are not ids", status=502)
    return orjson.dumps({"count": len(tokens), "max_model_len": parsed.get("max_model_len"), "tokens": tokens,
                         "token_strs": pieces if isinstance(pieces, list) else None})


class OpenAICompatBackend(Remote):

    def __init__(self, public_name: str, upstream_model: str, *, api_base: str, api_key: str | None,
                 pool: ClientPool, timeout: float, stream_timeout: float | None = None, native_fim: bool = False):
        self.public_name = public_name
        self.relays = frozenset({"fim"}) if native_fim else frozenset()
        """Wire formats this upstream takes as they are (see NATIVE_FIM)."""
        self.upstream_model = upstream_model
        self.base = api_base.rstrip("/")
        self._pool = pool
        self._path = urlsplit(self.base).path
        self._headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._heads: dict[tuple[str, str], bytes] = {}
        self._timeout = timeout
        self._stream_timeout = stream_timeout or timeout  # streams: the longest silence between two reads
        self._public_field = b'"model":' + orjson.dumps(public_name)
        self._root = self._path.removesuffix("/").removesuffix("/v1")  # where vLLM serves /tokenize
        self._openai = urlsplit(self.base).hostname == "api.openai.com"
        self._tiktoken = OpenAITokenizers()

    @property
    def _origin(self) -> Origin:
        return self._pool.get(self.base)

    def _head(self, method: str, path: str) -> bytes:
        head = self._heads.get((method, path))
        if head is None:
            head = self._heads[(method, path)] = self._origin.request_head(method, self._path + path, self._headers)
        return head

    def _rename(self, data: bytes) -> bytes:
        return _MODEL_FIELD.sub(self._public_field, data, count=1)

    async def _post(self, path: str, body: dict, *, at_root: bool = False) -> Completion:
        payload = orjson.dumps({**body, "model": self.upstream_model})
        head = self._origin.request_head("POST", self._root + path, self._headers) if at_root else self._head("POST", path)
        try:
            status, data, retry_after = await self._origin.exchange(head, payload, self._timeout)
        except HTTPClientError as exc:
            raise backend_error(exc, self.public_name) from exc
        if status >= 400:
            raise _upstream_error(status, data, retry_after)
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise errors.UpstreamHTTPError("upstream returned a body that is not JSON", status=502) from exc
        if not isinstance(parsed, dict):
            return Completion(self._rename(data), None)
        return Completion(self._rename(data), Usage.from_openai(parsed.get("usage")), answer_id(parsed))

    async def _stream(self, path: str, body: dict) -> AsyncIterator[Chunk]:
        payload = orjson.dumps({**body, "model": self.upstream_model, "stream": True})
        try:
            async with await self._origin.open(self._head("POST", path), payload, self._stream_timeout) as resp:
                if resp.status >= 400:
                    raise _upstream_error(resp.status, await resp.read(), resp.retry_after)
                async for data in _sse_data(resp):
                    if data == b"[DONE]":
                        return
                    parsed = None
                    if b'"usage"' in data:  # only chunks that may carry usage are parsed
                        with contextlib.suppress(orjson.JSONDecodeError):
                            parsed = orjson.loads(data)
                    yield Chunk.parsed(self._rename(data), parsed)
        except HTTPClientError as exc:
            raise backend_error(exc, self.public_name, streaming=True) from exc
        raise errors.UpstreamUnreachable(f"upstream {self.public_name} ended the stream without [DONE]")

    async def chat(self, body: dict) -> Completion:
        return await self._post("/chat/completions", body)

    def chat_stream(self, body: dict) -> AsyncIterator[Chunk]:
        return self._stream("/chat/completions", body)

    async def complete(self, body: dict) -> Completion:
        return await self._post("/completions", body)

    def complete_stream(self, body: dict) -> AsyncIterator[Chunk]:
        return self._stream("/completions", body)

    async def embed(self, body: dict) -> Completion:
        return await self._post("/embeddings", body)

    async def fim(self, body: dict) -> Completion:
        """Mistral's `/fim/completions`, relayed (only where `relays` has "fim")."""
        return await self._post("/fim/completions", body)

    def fim_stream(self, body: dict) -> AsyncIterator[Chunk]:
        return self._stream("/fim/completions", body)

    async def rerank(self, body: dict) -> Completion:
        """vLLM, llama.cpp's server, Infinity, Jina and Cohere-compatible servers: `{api_base}/rerank`."""
        return await self._post("/rerank", body)

    async def images(self, body: dict) -> Completion:
        return await self._post("/images/generations", body)

    async def moderate(self, body: dict) -> Completion:
        return await self._post("/moderations", body)

    async def tokenize(self, text: str) -> list[int]:
        raise errors.NotSupported(f"{self.public_name}: tokenize is not offered by this upstream")

    async def encode(self, body: dict) -> Completion:
        """OpenAI's models: tiktoken, offline. Others: the server's `/tokenize` (vLLM's, at the root
        beside /v1; llama.cpp's server answers the `content` and `with_pieces` it also gets), and
        tiktoken where the server has none and the model is one tiktoken knows."""
        if self._openai:
            return await self._tiktoken.encode(self.upstream_model, body)
        relayed = {**body, "return_token_strs": True}
        if body.get("messages") is None:
            relayed.update(content=body.get("prompt"), with_pieces=True,
                           add_special=body.get("add_special_tokens", True) is not False)
        try:
            answer = await self._post("/tokenize", relayed, at_root=True)
        except errors.UpstreamHTTPError as exc:
            return await self._without_route(exc, self._tiktoken.encode, body)
        return Completion(_tokenize_answer(answer.body), None)

    async def decode(self, body: dict) -> Completion:
        if self._openai:
            return await self._tiktoken.decode(self.upstream_model, body)
        try:
            answer = await self._post("/detokenize", body, at_root=True)
        except errors.UpstreamHTTPError as exc:
            return await self._without_route(exc, self._tiktoken.decode, body)
        data = _object(answer.body)
        text = data.get("prompt", data.get("content"))
        if not isinstance(text, str):
            raise errors.UpstreamHTTPError("the upstream's /detokenize answer has no text", status=502)
        return Completion(orjson.dumps({"prompt": text}), None)

    async def _without_route(self, exc: errors.UpstreamHTTPError, tiktoken, body: dict) -> Completion:
        """An upstream without the tokenizer routes (404, 405, 501): tiktoken for a model it knows,
        else a clear NotSupported."""
        if exc.status not in (404, 405, 501):
            raise exc
        if self._tiktoken.knows(self.upstream_model):
            return await tiktoken(self.upstream_model, body)
        raise errors.NotSupported(f"{self.public_name}: its upstream has no /tokenize and /detokenize (a vLLM "
                                  f"server has them; it answered HTTP {exc.status}: {exc.message}) and no "
                                  "tokenizer is known for this model") from exc

    async def health(self) -> bool:
        try:
            status, _ = await self._origin.fetch(self._head("GET", "/models"), b"", 5.0)
            return status < 500
        except HTTPClientError:
            return False

    async def aclose(self) -> None:
        """Connections belong to the ClientPool, which closes them."""
