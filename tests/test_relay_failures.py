"""The HTTP relays' failures below HTTP (backends/http.py `backend_error`), the same for
OpenAI-compatible and Anthropic upstreams, against small real socket servers: an upstream that
never answers times out, one that is not there or drops a stream mid-way is unreachable, and one
that redirects is a 502 naming where to."""

from __future__ import annotations

import asyncio

import pytest

from backends import errors
from backends.anthropic import AnthropicBackend
from backends.http import ClientPool
from backends.openai_compat import OpenAICompatBackend

from .test_http_client import Server

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
    gone = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = gone.sockets[0].getsockname()[1]
    gone.close()
    await gone.wait_closed()
    pool = ClientPool()
    for backend in _backends(f"http://127.0.0.1:{port}/v1", pool):
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


async def test_a_redirect_is_a_502_naming_where_to():
    async def moved(n, body, writer):
        writer.write(b"HTTP/1.1 307 Temporary Redirect\r\nLocation: https://api.example.com/v1/messages\r\n"
                     b"Content-Length: 0\r\n\r\n")

    async with Server(moved) as server:
        pool = ClientPool()
        for backend in _backends(server.url, pool):
            for stream in (False, True):
                with pytest.raises(errors.UpstreamHTTPError) as info:
                    await _answer(backend, stream=stream)
                assert info.value.status == 502 and info.value.message == (
                    f"upstream {backend.public_name}: upstream answered HTTP 307 with a redirect to "
                    "https://api.example.com/v1/messages")
        await pool.aclose()
