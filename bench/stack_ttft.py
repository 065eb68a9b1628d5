"""Time to first token through nginx (HTTPS, HTTP/1.1 keep-alive) against the same instance directly.

Brings up the production stack (scripts/stack.sh, as tests/stack.py does: nginx -> two instances ->
PostgreSQL + Redis -> the fake upstream of tests/upstream.py) and streams `--requests` chat
completions each way, alternating (each way first in turn), one at a time on a kept-alive connection. TTFT is the time from
sending the request to the first content chunk at the client. Prints the medians and p90s and the
median of the paired differences (nginx minus direct, the same round); then `--burst` streams opened at
once from one address, three times (nginx's per-address limit decides whether they wait).

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


async def burst(stack: Stack, key: str, n: int, source: str, base: str) -> list[float]:
    """TTFT of `n` streams started at once from one fresh client address, to `base`."""
    tls = ssl.create_default_context(cafile=stack.ca)
    transport = httpx.AsyncHTTPTransport(verify=tls, local_address=source, limits=httpx.Limits(max_connections=n))
    async with httpx.AsyncClient(transport=transport, timeout=30) as client:
        return list(await asyncio.gather(*(ttft(client, f"{base}/v1/chat/completions", key) for _ in range(n))))


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


async def measure(stack: Stack, requests: int, bursts: int) -> None:
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
            # Each way first in turn, with a pause before each request: the one just after a stream
            # would otherwise meet the instance still settling that stream (its usage record, logs).
            ways = [(proxied, f"{stack.base}/v1/chat/completions"),
                    (direct, f"{stack.instance_url(1 + i % 2)}/v1/chat/completions")]
            got = []
            for client, url in (ways if i % 2 == 0 else ways[::-1]):
                await asyncio.sleep(0.05)
                got.append(await ttft(client, url, key))
            a, b = got if i % 2 == 0 else got[::-1]
            through.append(a)
            straight.append(b)
            diffs.append(a - b)
    finally:
        await proxied.aclose()
        await direct.aclose()
    ms = 1000
    print(f"requests: {requests} each way, sequential, kept-alive connections")
    print(f"direct to an instance: TTFT median {statistics.median(straight) * ms:.2f} ms, p90 {pct(straight, 0.9) * ms:.2f} ms")
    print(f"through nginx (HTTPS): TTFT median {statistics.median(through) * ms:.2f} ms, p90 {pct(through, 0.9) * ms:.2f} ms")
    print(f"paired difference (nginx - direct): median {statistics.median(diffs) * ms:.2f} ms, "
          f"p90 {pct(diffs, 0.9) * ms:.2f} ms")
    if bursts:
        # A client that opens several streams at once (an agent's parallel calls, an editor's
        # completions): each from an address of its own, so nginx's per-address budget is fresh.
        firsts: dict[str, list[float]] = {"through nginx": [], "direct": []}
        for i in range(3):
            firsts["through nginx"] += await burst(stack, key, bursts, f"127.0.0.{62 + i}", stack.base)
            firsts["direct"] += await burst(stack, key, bursts, "127.0.0.1", stack.instance_url(1))
            await asyncio.sleep(1)
        for way, values in firsts.items():
            print(f"bursts of {bursts} streams at once (3 bursts, {way}): TTFT median "
                  f"{statistics.median(values) * ms:.2f} ms, max {max(values) * ms:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--burst", type=int, default=10, help="streams opened at once from one address (0: none)")
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
                asyncio.run(measure(stack, args.requests, args.burst))
            finally:
                stack.down()
    finally:
        subprocess.run(psql + [f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"])


if __name__ == "__main__":
    main()
