"""The HTTP relays' failures below HTTP (backends/http.py `backend_error`), the same for
OpenAI-compatible and Anthropic upstreams, against small real socket servers: an upstream that
never answers times out, one that is not there or drops a stream mid-way is unreachable (a
redirect: test_http_client_edges.py)."""

from __future__ import annotations

import asyncio

import pytest

from backends import errors
from backends.anthropic import AnthropicBackend
from backends.http import ClientPool
from backends.openai_compat import OpenAICompatBackend

from .test_http_client import Server, closed_port

BODY = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


def _backends(url: str, pool: ClientPool) -> list:
    return [OpenAICompatBackend("gpt", "gpt-up", api_base=url, api_key=None, pool=pool, timeout=0.3),
            AnthropicBackend("claude", "claude-up", api_base=url.removesuffix("/v1"), api_key=None, pool=pool,
                             timeout=0.3, stream_timeout=None, params={})]


def _answer(backend, *, stream: bool):
    """The backend's answer to BODY, whole or (drained) streamed."""
    async def drain(chunks) -> None:
        async for _ in chunks:
            pass
    if isinstance(backend, AnthropicBackend):
        return drain(backend.messages_stream(BODY)) if stream else backend.messages(BODY)
    return drain(backend.chat_stream(BODY)) if stream else backend.chat(BODY)


async def test_silence_is_a_timeout():
    async def silent(n, body, writer):
        for _ in range(100):
            if server.reader.at_eof():
                return False
            await asyncio.sleep(0.02)

    async with Server(silent) as server:
        pool = ClientPool()
        for backend in _backends(server.url, pool):
            for stream, says in ((False, "timed out"), (True, "stopped sending")):
                with pytest.raises(errors.UpstreamTimeout, match=f"upstream {backend.public_name} {says}"):
                    await _answer(backend, stream=stream)
        await pool.aclose()


async def test_nothing_listening_and_a_stream_dropped_midway_are_unreachable():
    pool = ClientPool()
    for backend in _backends(f"http://127.0.0.1:{await closed_port()}/v1", pool):
        for stream, says in ((False, "unreachable: ConnectFailed"), (True, "dropped the stream: ConnectFailed")):
            with pytest.raises(errors.UpstreamUnreachable, match=f"upstream {backend.public_name} {says}"):
                await _answer(backend, stream=stream)

    async def drops(n, body, writer):
        event = b'data: {"id":"c"}\n\n'
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"%x\r\n%s\r\n" % (len(event), event))
        await writer.drain()
        return False  # the connection closes before the stream's end

    async with Server(drops) as server:
        for backend in _backends(server.url, pool):
            with pytest.raises(errors.UpstreamUnreachable,
                               match=f"upstream {backend.public_name} dropped the stream: Disconnected"):
                await _answer(backend, stream=True)
    await pool.aclose()

