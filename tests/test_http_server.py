"""The HTTP server's own limits (issue 11), against a real `keystile serve` over raw sockets: a cap
on a request's head (431), time limits for slow senders (408 / close), and malformed HTTP answered
in the error envelope."""

from __future__ import annotations

import asyncio
import resource
import subprocess
import time
from pathlib import Path

import httpx
import orjson
import pytest

from .conftest import relay_config
from .servers import BIN, Keystile

# The limits come from the environment, over config.yaml's (which would let all of this through).
LIMITS = {"KEYSTILE_MAX_HEADER_BYTES": "16384", "KEYSTILE_HEADER_TIMEOUT": "1.0", "KEYSTILE_BODY_TIMEOUT": " 1 ",
          "KEYSTILE_MAX_REQUEST_BYTES": "40000"}
FILE_LIMITS = {"max_header_bytes": 1 << 20, "header_timeout": 60.0, "body_timeout": 60.0, "max_request_bytes": 1 << 20}


SLOW_SENDERS = 3000  # the number of half-sent requests the issue found held open for good
FILES_NEEDED = SLOW_SENDERS + 1000


def enough_files() -> None:
    """Room for SLOW_SENDERS sockets in this process and in the server it starts (which inherits it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < FILES_NEEDED:
        assert hard == resource.RLIM_INFINITY or hard >= FILES_NEEDED, f"RLIMIT_NOFILE hard limit {hard} is too low"
        resource.setrlimit(resource.RLIMIT_NOFILE, (FILES_NEEDED, hard))


@pytest.fixture(scope="module")
def server(tmp_path_factory, upstream):
    enough_files()
    with Keystile(tmp_path_factory.mktemp("limits"), relay_config(upstream, **FILE_LIMITS), env=LIMITS) as keystile:
        yield keystile


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def answer(reader: asyncio.StreamReader, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes, bool]:
    """Status, headers, body of one answer, and whether the server then closed the connection."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if line)
    body = await reader.readexactly(int(headers.get("content-length", 0)))
    closed = await asyncio.wait_for(reader.read(1), timeout) == b""
    return int(lines[0].split()[1]), headers, body, closed


def envelope(body: bytes) -> dict:
    error = orjson.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


async def test_oversized_headers_get_431_and_memory_stays_flat(server):
    async def huge_authorization() -> tuple[int, bytes, int]:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ")
        answered = asyncio.create_task(answer(reader, timeout=60))
        sent = 0
        try:
            while sent < 16 << 20 and not answered.done():  # 16 MiB in 64 KiB pieces, unless answered first
                writer.write(b"a" * 65536)
                await writer.drain()
                sent += 65536
        except ConnectionError:
            pass
        status, headers, body, _ = await answered
        writer.close()
        return status, body, sent

    before = rss_mib(server.proc.pid)
    results = await asyncio.gather(*(huge_authorization() for _ in range(20)))
    grown = rss_mib(server.proc.pid) - before
    assert grown < 40, f"RSS grew {grown:.0f} MiB"
    for status, body, _ in results:
        assert status == 431
        error = envelope(body)
        assert error["code"] == "request_header_too_large" and "16384 bytes" in error["message"]

    ok = httpx.get(server.url + "/health/liveliness", headers={"X-Padding": "p" * 12000})
    assert ok.status_code == 200  # within the cap

    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    body = b'{"model":"echo","messages":[]}'
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\nContent-Length: %d\r\n\r\n%s"
                 % (b"b" * 40000, len(body), body))  # a whole oversized head (and body) in one read
    status, _, answer_body, closed = await answer(reader)
    assert status == 431 and closed and envelope(answer_body)["code"] == "request_header_too_large"
    writer.close()

    big_body = orjson.dumps({"model": "echo", "messages": [{"role": "user", "content": "x" * 30000}]})
    small_head = httpx.post(server.url + "/v1/chat/completions", content=big_body,
                            headers={"Authorization": f"Bearer {server.master_key}",
                                     "Content-Type": "application/json"})
    assert small_head.status_code == 200  # a large body in the same read as its head is not a large head

    too_big = httpx.post(server.url + "/v1/chat/completions", content=big_body + b" " * 10000,
                         headers={"Authorization": f"Bearer {server.master_key}", "Content-Type": "application/json"})
    assert too_big.status_code == 413 and "40000" in too_big.json()["error"]["message"]  # KEYSTILE_MAX_REQUEST_BYTES


async def test_half_sent_heads_get_408_and_are_closed(server):
    """3,000 connections that send half a head or nothing: each gets 408 and is closed after
    header_timeout (1 s here), while a normal request is served as usual."""
    async def slow_sender(i: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        if i % 2:  # half send half a head, half send nothing at all
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: app")
        return reader, writer

    connections = []
    for start in range(0, SLOW_SENDERS, 250):
        connections += await asyncio.gather(*(slow_sender(i) for i in range(start, start + 250)))
    opened = time.monotonic()
    async with httpx.AsyncClient(timeout=5) as client:  # meanwhile, a normal request
        ok = await client.post(server.url + "/v1/chat/completions", json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]},
                               headers={"Authorization": f"Bearer {server.master_key}"})
    assert ok.status_code == 200 and time.monotonic() - opened < 1.0, "a normal request waited on the slow ones"

    results = await asyncio.gather(*(answer(reader) for reader, _ in connections))
    print(f"{SLOW_SENDERS} slow senders closed {time.monotonic() - opened:.2f} s after the last opened")
    assert time.monotonic() - opened < 4.0, "slow senders were not closed within header_timeout"
    assert len(results) == SLOW_SENDERS
    for status, _, body, closed in results:
        assert status == 408 and closed
        assert envelope(body)["code"] == "request_timeout"
    for _, writer in connections:
        writer.close()


async def test_a_stalled_body_is_closed_and_a_slow_steady_one_is_not(server):
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n")
    body = orjson.dumps({"model": "echo", "messages": [{"role": "user", "content": "slow " * 10}]})
    key = server.master_key.encode()

    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(head % (key, len(body)) + body[:20])
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(), 5.0) == b""  # closed, nothing answered
    assert 0.9 <= time.monotonic() - started < 3.0
    writer.close()

    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(head % (key, len(body)))
    for i in range(0, len(body), 20):  # 20 bytes every 0.4 s: slower in all than the limit, never idle that long
        await asyncio.sleep(0.4)
        writer.write(body[i:i + 20])
    status, _, answer_body, _ = await answer(reader)
    assert status == 200 and b"echo: slow" in answer_body
    writer.close()


async def test_malformed_http_gets_the_error_envelope(server):
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Without Colon\r\n\r\n")
    status, headers, body, closed = await answer(reader)
    assert status == 400 and headers["content-type"] == "application/json" and closed
    error = envelope(body)
    assert error["type"] == "invalid_request_error" and "malformed HTTP" in error["message"]
    writer.close()


def test_an_unusable_proxy_setting_stops_serve_with_one_line(tmp_path, upstream):
    keystile = Keystile(tmp_path, relay_config(upstream), env={"HTTPS_PROXY": "socks4://127.0.0.1:1080"})
    out = subprocess.run([str(BIN / "keystile"), "serve", "--config", str(keystile.config_path),
                          "--port", str(keystile.port)], env=keystile.env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1
    assert "only http://, https://, socks5:// and socks5h:// proxies are supported" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("name, value, message", [
    ("KEYSTILE_MAX_HEADER_BYTES", "1024", "KEYSTILE_MAX_HEADER_BYTES: Input should be greater than or equal to 4096"),
    ("KEYSTILE_HEADER_TIMEOUT", "soon", "KEYSTILE_HEADER_TIMEOUT: Input should be a valid number"),
])
def test_a_bad_limit_in_the_environment_stops_serve_naming_it(tmp_path, upstream, name, value, message):
    keystile = Keystile(tmp_path, relay_config(upstream), env={name: value})
    out = subprocess.run([str(BIN / "keystile"), "serve", "--config", str(keystile.config_path),
                          "--port", str(keystile.port)], env=keystile.env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1 and message in out.stderr and "Traceback" not in out.stderr, out.stderr
