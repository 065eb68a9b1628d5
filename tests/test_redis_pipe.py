"""The limiter's auto-pipelined Redis connection (proxy/limits/pipe.py) against the real Redis, and
against small TCP servers that hang or hang up."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError, ResponseError, TimeoutError

from proxy.limits.pipe import RedisPipe

REDIS_URL = "redis://127.0.0.1:6379/0"


async def test_replies_in_order_and_one_write_per_turn():
    pipe = RedisPipe(REDIS_URL)
    key = f"keystile-test:pipe:{uuid.uuid4().hex}"
    replies = await asyncio.gather(*(pipe.call("INCR", key) for _ in range(200)))
    assert replies == list(range(1, 201))
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await pipe.call("LPUSH", key, "x")
    assert await pipe.call("DEL", key) == 1  # an error reply does not disturb the ones after it
    await pipe.aclose()


async def test_database_from_the_url():
    key = f"keystile-test:pipe:{uuid.uuid4().hex}"
    pipe = RedisPipe(REDIS_URL.rsplit("/", 1)[0] + "/3")
    await pipe.call("SET", key, "in-db-3")
    other = Redis.from_url(REDIS_URL.rsplit("/", 1)[0] + "/3")
    assert await other.get(key) == b"in-db-3"
    await other.delete(key)
    await other.aclose()
    await pipe.aclose()


async def _server(handle) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"


async def test_silent_server_times_out_every_waiting_command():
    async def swallow(reader, writer):
        await reader.read(1 << 16)
        await asyncio.sleep(10)

    server, url = await _server(swallow)
    pipe = RedisPipe(url, timeout=0.3)
    started = time.monotonic()
    results = await asyncio.gather(*(pipe.call("PING") for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, TimeoutError) for r in results), results
    assert 0.3 <= time.monotonic() - started < 1.5
    await pipe.aclose()
    server.close()


async def test_hang_up_fails_commands_in_flight_and_the_next_call_reconnects():
    connections = 0

    async def hang_up_once(reader, writer):
        nonlocal connections
        connections += 1
        data = await reader.read(1 << 16)
        if connections == 1:
            writer.close()
            return
        writer.write(b"+PONG\r\n" * data.count(b"PING"))
        await writer.drain()
        await asyncio.sleep(1)

    server, url = await _server(hang_up_once)
    pipe = RedisPipe(url)
    results = await asyncio.gather(*(pipe.call("PING") for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results), results
    assert await pipe.call("PING") == b"PONG"
    assert connections == 2
    await pipe.aclose()
    server.close()


async def test_nothing_listening_is_a_connection_error():
    server, url = await _server(lambda r, w: None)
    server.close()
    await server.wait_closed()
    with pytest.raises(ConnectionError, match="cannot connect"):
        await RedisPipe(url).call("PING")
