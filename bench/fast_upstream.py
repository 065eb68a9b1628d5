"""The fast upstream for bench/relay_bench.py: a minimal OpenAI-compatible server, raw ASGI on
uvicorn (uvloop + httptools), built to cost as little as possible so it is never the bottleneck.

POST /v1/chat/completions answers a fixed chat.completion (with usage); with `"stream": true` in
the body it answers 5 content chunks, a usage chunk and `data: [DONE]`, one SSE event per write.
Every answer is precomputed bytes; the body is only searched for `"stream":true`, never parsed.

    python bench/fast_upstream.py --port 8101
"""

from __future__ import annotations

import argparse
import json

from asgi_body import read_body

MODEL = "bench-upstream"
WORDS = ["Hello", " from", " the", " fast", " upstream"]
USAGE = {"prompt_tokens": 9, "completion_tokens": len(WORDS), "total_tokens": 9 + len(WORDS)}


def _dumps(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


COMPLETION = _dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(WORDS)},
                 "finish_reason": "stop"}],
    "usage": USAGE,
})


def _event(choices: list, **extra) -> bytes:
    chunk = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000, "model": MODEL,
             "choices": choices, **extra}
    return b"data: " + _dumps(chunk) + b"\n\n"


STREAM_EVENTS: list[bytes] = [
    _event([{"index": 0, "delta": {"role": "assistant", "content": w} if i == 0 else {"content": w},
             "finish_reason": "stop" if i == len(WORDS) - 1 else None}])
    for i, w in enumerate(WORDS)
] + [_event([], usage=USAGE), b"data: [DONE]\n\n"]

JSON_START = {"type": "http.response.start", "status": 200,
              "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(COMPLETION)).encode())]}
JSON_BODY = {"type": "http.response.body", "body": COMPLETION}
SSE_START = {"type": "http.response.start", "status": 200,
             "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]}
SSE_BODIES = [{"type": "http.response.body", "body": e, "more_body": True} for e in STREAM_EVENTS]
SSE_END = {"type": "http.response.body", "body": b"", "more_body": False}
NOT_FOUND = b'{"error":{"message":"not found","type":"invalid_request_error"}}'
NOT_FOUND_START = {"type": "http.response.start", "status": 404,
                   "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(NOT_FOUND)).encode())]}
NOT_FOUND_BODY = {"type": "http.response.body", "body": NOT_FOUND}


async def app(scope, receive, send):
    if scope["type"] != "http":
        return  # lifespan is off
    body = await read_body(receive)
    if scope["method"] != "POST" or not scope["path"].endswith("/chat/completions"):
        await send(NOT_FOUND_START)
        await send(NOT_FOUND_BODY)
        return
    if b'"stream":true' in body or b'"stream": true' in body:
        await send(SSE_START)
        for event in SSE_BODIES:
            await send(event)
        await send(SSE_END)
        return
    await send(JSON_START)
    await send(JSON_BODY)


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, loop="uvloop", http="httptools", log_level="warning",
                access_log=False, lifespan="off")


if __name__ == "__main__":
    main()
