"""The baseline for bench/relay_bench.py: the least a Python relay can do. Raw ASGI on uvicorn
(uvloop + httptools, one worker), one pooled aiohttp ClientSession (Keystile's HTTP client, same
connector settings), one upstream call per request. It forwards the request body as is and relays
the answer: JSON read whole, SSE passed on chunk by chunk as it arrives. No auth, no parsing.

    python bench/minimal_relay.py --port 8102 --upstream http://127.0.0.1:8101
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


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL of the upstream, e.g. http://127.0.0.1:8101")
    args = parser.parse_args()
    uvicorn.run(make_app(args.upstream.rstrip("/")), host=args.host, port=args.port, loop="uvloop",
                http="httptools", log_level="warning", access_log=False, lifespan="on")


if __name__ == "__main__":
    main()
