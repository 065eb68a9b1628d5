"""`anthropic/…` deployments: chat, completions and embeddings through the litellm SDK (translated,
as every other provider), and Anthropic's own Messages API relayed as it is (`messages`,
`messages_stream`, `count_tokens`): the client's body with only `model` set to the upstream's name, its
`anthropic-version` and `anthropic-beta` headers, the answer's bytes and the upstream's errors
unchanged (Claude Code's recovery reads their wording). Usage is read from the answer
(`usage`) and from the stream (`message_start`, then `message_delta`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import orjson

from . import errors
from .base import Chunk, Completion, Usage, answer_id
from .http import ClientPool, HTTPClientError, backend_error
from .openai_compat import _sse_data, retry_after_seconds
from .providers import LiteLLMBackend

DEFAULT_BASE = "https://api.anthropic.com"
DEFAULT_VERSION = "2023-06-01"
FORWARDED = ("anthropic-version", "anthropic-beta")
"""The client's headers a relayed request carries on, from the body's `extra_headers`."""


def _messages_path(base: str) -> str:
    path = urlsplit(base).path.rstrip("/")
    if path.endswith("/v1/messages"):
        return path
    return path + ("/messages" if path.endswith("/v1") else "/v1/messages")


def usage_of(usage: Any) -> Usage | None:
    """Anthropic's usage object: the prompt counts cache reads and writes too (they are prompt
    tokens, priced apart: `cache_read_input_tokens`, `cache_creation_input_tokens`)."""
    if not isinstance(usage, dict):
        return None
    read, created = int(usage.get("cache_read_input_tokens") or 0), int(usage.get("cache_creation_input_tokens") or 0)
    return Usage(int(usage.get("input_tokens") or 0) + read + created, int(usage.get("output_tokens") or 0),
                 read, created)


def _error(status: int, body: bytes, retry_after: str | None) -> errors.UpstreamHTTPError:
    message = f"upstream answered HTTP {status}"
    try:
        err = orjson.loads(body).get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            message = err["message"]
    except (orjson.JSONDecodeError, AttributeError):
        pass
    return errors.UpstreamHTTPError(message[:500], status=status, body=body,
                                    retry_after=retry_after_seconds(retry_after))


class AnthropicBackend(LiteLLMBackend):
    relays = frozenset({"anthropic"})
    """Wire formats this backend takes as they are: the gateway relays Anthropic Messages here."""

    def __init__(self, public_name: str, upstream_model: str, *, api_base: str | None, api_key: str | None,
                 pool: ClientPool, timeout: float, stream_timeout: float | None, params: dict[str, Any]):
        super().__init__(public_name, f"anthropic/{upstream_model}", timeout=timeout,
                         params={**params, "api_base": api_base, "api_key": api_key})
        self.upstream_model = upstream_model
        self._base = (api_base or DEFAULT_BASE).rstrip("/")
        self._path = _messages_path(self._base)
        self._key = api_key
        self._pool = pool
        self._relay_timeout = timeout
        self._stream_timeout = stream_timeout or timeout

    def _request(self, body: dict, path: str = "") -> tuple[bytes, bytes]:
        forwarded = body.get("extra_headers") or {}
        headers = {"Content-Type": "application/json", "anthropic-version": DEFAULT_VERSION}
        headers.update({k: v for k, v in forwarded.items() if k in FORWARDED and v})
        if self._key:
            headers["x-api-key"] = self._key
        payload = orjson.dumps({**{k: v for k, v in body.items() if k != "extra_headers"},
                                "model": self.upstream_model})
        return self._pool.get(self._base).request_head("POST", self._path + path, headers), payload

    async def messages(self, body: dict) -> Completion:
        return await self._exchange(body)

    async def count_tokens(self, body: dict) -> Completion:
        """`POST /v1/messages/count_tokens`, relayed like `messages` (`{"input_tokens": n}` back)."""
        return await self._exchange(body, "/count_tokens")

    async def _exchange(self, body: dict, path: str = "") -> Completion:
        head, payload = self._request(body, path)
        try:
            status, data, retry_after = await self._pool.get(self._base).exchange(head, payload, self._relay_timeout)
        except HTTPClientError as exc:
            raise backend_error(exc, self.public_name) from exc
        if status >= 400:
            raise _error(status, data, retry_after)
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            return Completion(data, None)
        return Completion(data, usage_of(parsed.get("usage")), answer_id(parsed))

    async def messages_stream(self, body: dict) -> AsyncIterator[Chunk]:
        head, payload = self._request({**body, "stream": True})
        start = Usage()
        try:
            async with await self._pool.get(self._base).open(head, payload, self._stream_timeout) as resp:
                if resp.status >= 400:
                    raise _error(resp.status, await resp.read(), resp.retry_after)
                async for data in _sse_data(resp):
                    usage = None
                    head_of = data[:40]
                    if b'"message_start"' in head_of or b'"message_delta"' in head_of:
                        parsed = orjson.loads(data)
                        found = usage_of((parsed.get("message") or parsed).get("usage"))
                        if found is not None and parsed["type"] == "message_start":
                            start = found
                        elif found is not None:  # message_delta: the final counts, the prompt's if it says
                            usage = found if found.prompt_tokens else \
                                Usage(start.prompt_tokens, found.completion_tokens, start.cache_read_tokens,
                                      start.cache_creation_tokens)
                    yield Chunk(data, usage)
        except HTTPClientError as exc:
            raise backend_error(exc, self.public_name, streaming=True) from exc
