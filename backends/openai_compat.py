"""Any OpenAI-compatible HTTP upstream (vLLM, llama.cpp's server, OpenAI, Groq, Together, ...).

Bodies pass through as bytes: the only edit is the `model` field, rewritten to the public name in
answers. Streams are relayed event by event as they arrive, never buffered.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import aiohttp
import orjson

from . import errors
from .base import Chunk, Completion, Usage

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

_MODEL_FIELD = re.compile(rb'"model"\s*:\s*"(?:[^"\\]|\\.)*"')
_MAX_ERROR_MESSAGE = 500


class SessionPool:
    """One pooled aiohttp session per upstream base URL, shared by the deployments using it."""

    def __init__(self, *, connect_timeout: float = 10.0, limit_per_host: int = 256):
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._connect_timeout = connect_timeout
        self._limit = limit_per_host

    def get(self, base_url: str) -> aiohttp.ClientSession:
        session = self._sessions.get(base_url)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=self._limit, ttl_dns_cache=300)
            session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout),
                json_serialize=lambda o: orjson.dumps(o).decode(),
                auto_decompress=True,
            )
            self._sessions[base_url] = session
        return session

    async def aclose(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)


def _upstream_error(status: int, body: bytes) -> errors.UpstreamHTTPError:
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
    )


class OpenAICompatBackend:
    def __init__(self, public_name: str, upstream_model: str, *, api_base: str, api_key: str | None,
                 pool: SessionPool, timeout: float, stream_timeout: float | None = None):
        self.public_name = public_name
        self.upstream_model = upstream_model
        self.base = api_base.rstrip("/")
        self._pool = pool
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._stream_timeout = aiohttp.ClientTimeout(total=None, sock_read=stream_timeout or timeout)
        self._public_field = b'"model":' + orjson.dumps(public_name)

    @property
    def _session(self) -> aiohttp.ClientSession:
        """The upstream's pooled session, made on first use (so building a backend needs no loop)."""
        return self._pool.get(self.base)

    def _rename(self, data: bytes) -> bytes:
        return _MODEL_FIELD.sub(self._public_field, data, count=1)

    async def _post(self, path: str, body: dict) -> Completion:
        payload = orjson.dumps({**body, "model": self.upstream_model})
        try:
            async with self._session.post(self.base + path, data=payload, headers=self._headers,
                                          timeout=self._timeout) as resp:
                data = await resp.read()
                if resp.status >= 400:
                    raise _upstream_error(resp.status, data)
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise errors.UpstreamTimeout(f"upstream {self.public_name} timed out") from exc
        except aiohttp.ClientError as exc:
            raise errors.UpstreamUnreachable(f"upstream {self.public_name} unreachable: {type(exc).__name__}") from exc
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise errors.UpstreamHTTPError("upstream returned a body that is not JSON", status=502) from exc
        usage = Usage.from_openai(parsed.get("usage")) if isinstance(parsed, dict) else None
        return Completion(self._rename(data), usage)

    async def _stream(self, path: str, body: dict) -> AsyncIterator[Chunk]:
        payload = orjson.dumps({**body, "model": self.upstream_model, "stream": True})
        try:
            async with self._session.post(self.base + path, data=payload, headers=self._headers,
                                          timeout=self._stream_timeout) as resp:
                if resp.status >= 400:
                    raise _upstream_error(resp.status, await resp.read())
                async for line in resp.content:
                    if not line.startswith(b"data:"):
                        continue  # blank separators, comments, event names
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        return
                    usage = None
                    if b'"usage"' in data:
                        try:
                            usage = Usage.from_openai(orjson.loads(data).get("usage"))
                        except (orjson.JSONDecodeError, AttributeError):
                            usage = None
                    yield Chunk(self._rename(data), usage)
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise errors.UpstreamTimeout(f"upstream {self.public_name} stopped sending") from exc
        except aiohttp.ClientError as exc:
            raise errors.UpstreamUnreachable(f"upstream {self.public_name} dropped the stream: {type(exc).__name__}") from exc
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

    async def tokenize(self, text: str) -> list[int]:
        raise errors.NotSupported(f"{self.public_name}: tokenize is not offered by this upstream")

    async def health(self) -> bool:
        try:
            async with self._session.get(self.base + "/models", headers=self._headers,
                                         timeout=aiohttp.ClientTimeout(total=5)) as resp:
                return resp.status < 500
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False

    async def aclose(self) -> None:
        """Sessions belong to the SessionPool, which closes them."""
