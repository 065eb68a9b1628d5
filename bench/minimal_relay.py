"""The baseline for bench/relay_bench.py: the least a Python relay can do. Raw ASGI on uvicorn
(uvloop + httptools, one worker), one pooled upstream client, one upstream call per request. It
forwards the request body as is and relays the answer: JSON read whole, SSE passed on chunk by
chunk as it arrives. No auth, no parsing.

The client is aiohttp by default (what a Python relay would use). `--client keystile` uses
Keystile's own upstream client (backends/http.py) instead, to tell Keystile's overhead apart from
the difference between the two clients.

    python bench/minimal_relay.py --port 8102 --upstream http://127.0.0.1:8101 [--client keystile]
"""

from __future__ import annotations

import argparse

import aiohttp
from asgi_body import read_body

FORWARD_HEADERS = {"Content-Type": "application/json"}


def make_app(upstream: str):
    state: dict[str, aiohttp.ClientSession] = {}

    async def lifespan(receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                connector = aiohttp.TCPConnector(limit=0, limit_per_host=256, ttl_dns_cache=300)
                state["session"] = aiohttp.ClientSession(connector=connector,
                                                         timeout=aiohttp.ClientTimeout(total=None))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await state["session"].close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def app(scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        async with state["session"].post(upstream + scope["path"], data=body, headers=FORWARD_HEADERS) as resp:
            content_type = resp.headers.get("Content-Type", "application/json").encode()
            if content_type.startswith(b"text/event-stream"):
                await send({"type": "http.response.start", "status": resp.status,
                            "headers": [(b"content-type", content_type), (b"cache-control", b"no-cache")]})
                async for chunk in resp.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            data = await resp.read()
            await send({"type": "http.response.start", "status": resp.status,
                        "headers": [(b"content-type", content_type), (b"content-length", str(len(data)).encode())]})
            await send({"type": "http.response.body", "body": data})

    return app


def make_keystile_client_app(upstream: str):
    """The same relay on Keystile's upstream client (imported from the repository's backends/)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from backends.http import ClientPool

    pool = ClientPool()
    origin = pool.get(upstream)

    async def app(scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await pool.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        head = origin.request_head("POST", scope["path"], FORWARD_HEADERS)
        async with await origin.open(head, body, 60.0) as resp:
            chunks = resp.chunks()
            first = await anext(chunks, b"")
            if first.startswith(b"data:"):
                await send({"type": "http.response.start", "status": resp.status,
                            "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
                await send({"type": "http.response.body", "body": first, "more_body": True})
                async for chunk in chunks:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            data = first + b"".join([c async for c in chunks])
            await send({"type": "http.response.start", "status": resp.status,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
            await send({"type": "http.response.body", "body": data})

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL of the upstream, e.g. http://127.0.0.1:8101")
    parser.add_argument("--client", choices=["aiohttp", "keystile"], default="aiohttp")
    args = parser.parse_args()
    make = make_keystile_client_app if args.client == "keystile" else make_app
    uvicorn.run(make(args.upstream.rstrip("/")), host=args.host, port=args.port, loop="uvloop",
                http="httptools", log_level="warning", access_log=False, lifespan="on")


if __name__ == "__main__":
    main()
