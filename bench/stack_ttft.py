"""Time to first token through nginx (HTTPS, HTTP/1.1 keep-alive) against the same instance directly.

Brings up the production stack (scripts/stack.sh, as tests/stack.py does: nginx -> two instances ->
PostgreSQL + Redis -> the fake upstream of tests/upstream.py) and streams `--requests` chat
completions each way, alternating, one at a time on a kept-alive connection. TTFT is the time from
sending the request to the first content chunk at the client. Prints the medians and p90s and the
median of the paired differences (nginx minus direct, the same round).

    .venv/bin/python bench/stack_ttft.py --requests 200

Needs nginx, PostgreSQL on 127.0.0.1:5432 (a fresh database is made and dropped) and Redis on
127.0.0.1:6379. Not a test: no target is asserted (the house rule), the figure is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.stack import Stack  # noqa: E402
from tests.upstream import FakeUpstream  # noqa: E402

BODY = {"model": "echo", "stream": True, "messages": [{"role": "user", "content": "one two three four"}]}


async def ttft(client: httpx.AsyncClient, url: str, key: str) -> float:
    started = time.perf_counter()
    async with client.stream("POST", url, json=BODY, headers={"Authorization": f"Bearer {key}"}) as r:
        assert r.status_code == 200, await r.aread()
        first = None
        async for line in r.aiter_lines():
            if first is None and line.startswith("data: {"):
                first = time.perf_counter() - started
    assert first is not None
    return first


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


async def measure(stack: Stack, requests: int) -> None:
    key = await stack.key()
    tls = ssl.create_default_context(cafile=stack.ca)
    # 127.0.0.61 has its own nginx budget (10 r/s, burst 20): pace to stay inside it.
    proxied = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(verify=tls, local_address="127.0.0.61"), timeout=30)
    direct = httpx.AsyncClient(timeout=30)
    through, straight, diffs = [], [], []
    try:
        for _ in range(5):  # warm both connections and caches
            await ttft(proxied, f"{stack.base}/v1/chat/completions", key)
            await ttft(direct, f"{stack.instance_url(1)}/v1/chat/completions", key)
        for i in range(requests):
            a = await ttft(proxied, f"{stack.base}/v1/chat/completions", key)
            b = await ttft(direct, f"{stack.instance_url(1 + i % 2)}/v1/chat/completions", key)
            through.append(a)
            straight.append(b)
            diffs.append(a - b)
            await asyncio.sleep(0.1)
    finally:
        await proxied.aclose()
        await direct.aclose()
    ms = 1000
    print(f"requests: {requests} each way, sequential, kept-alive connections")
    print(f"direct to an instance: TTFT median {statistics.median(straight) * ms:.2f} ms, p90 {pct(straight, 0.9) * ms:.2f} ms")
    print(f"through nginx (HTTPS): TTFT median {statistics.median(through) * ms:.2f} ms, p90 {pct(through, 0.9) * ms:.2f} ms")
    print(f"paired difference (nginx - direct): median {statistics.median(diffs) * ms:.2f} ms, "
          f"p90 {pct(diffs, 0.9) * ms:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    name = f"keystile_bench_{uuid.uuid4().hex[:8]}"
    psql = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qc"]
    subprocess.run(psql + [f"CREATE DATABASE {name}"], check=True)
    try:
        with tempfile.TemporaryDirectory() as tmp, FakeUpstream() as upstream:
            stack = Stack(Path(tmp), upstream, f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}",
                          "redis://127.0.0.1:6379/0")
            try:
                stack.run("up")
                asyncio.run(measure(stack, args.requests))
            finally:
                stack.down()
    finally:
        subprocess.run(psql + [f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"])


if __name__ == "__main__":
    main()
