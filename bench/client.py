"""Plain HTTP calls of bench/relay_bench.py outside the load: the request bodies, POST/GET with
http.client, and the sanity check every target must pass before it is measured."""

from __future__ import annotations

import http.client
import json

MODEL = "bench"
MESSAGES = [{"role": "user", "content": "Say hello in five words."}]
BODIES = {
    "json": {"model": MODEL, "messages": MESSAGES, "max_tokens": 16},
    "stream": {"model": MODEL, "messages": MESSAGES, "max_tokens": 16, "stream": True,
               "stream_options": {"include_usage": True}},
}


def post(url: str, path: str, body: dict, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """POST JSON; the status, the response headers (names lower-cased) and the body."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json", **headers})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def get(url: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def request(url: str, path: str, body: dict, headers: dict[str, str]) -> tuple[int, bytes]:
    status, _, data = post(url, path, body, headers)
    return status, data


def sanity_check(name: str, url: str, headers: dict[str, str]) -> None:
    """One JSON and one streamed request must answer like the upstream does, or nothing is measured."""
    status, data = request(url, "/v1/chat/completions", BODIES["json"], headers)
    if status != 200:
        raise RuntimeError(f"{name}: JSON request answered {status}: {data[:500]!r}")
    parsed = json.loads(data)
    if not parsed.get("choices") or not parsed.get("usage"):
        raise RuntimeError(f"{name}: JSON answer lacks choices/usage: {data[:500]!r}")
    status, data = request(url, "/v1/chat/completions", BODIES["stream"], headers)
    if status != 200:
        raise RuntimeError(f"{name}: stream request answered {status}: {data[:500]!r}")
    events = [line[5:].strip() for line in data.split(b"\n") if line.startswith(b"data:")]
    content = [e for e in events if b'"content"' in e]
    if events[-1:] != [b"[DONE]"] or len(content) < 5:
        raise RuntimeError(f"{name}: stream answer is not 5+ content events ending in [DONE]: {data[:800]!r}")

