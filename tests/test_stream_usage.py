"""`stream_options.include_usage` as Continue relies on it: usage in exactly one chunk, the last,
with `choices: []`; every other chunk says `"usage": null` (fake upstream; the local model in
test_clients_local.py)."""

from __future__ import annotations

import httpx
import orjson


def usage_stream(url: str, key: str, body: dict) -> list[dict]:
    with httpx.stream("POST", url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                      json={**body, "stream": True, "stream_options": {"include_usage": True}}, timeout=120) as r:
        assert r.status_code == 200
        lines = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [orjson.loads(line) for line in lines[:-1]]


def check_usage_chunks(chunks: list[dict]) -> None:
    assert all("usage" in c for c in chunks), chunks
    with_usage = [c for c in chunks if c["usage"] is not None]
    assert len(with_usage) == 1 and with_usage[0] is chunks[-1] and chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] > 0


def test_include_usage_on_a_relayed_upstream(clients_gateway):
    check_usage_chunks(usage_stream(clients_gateway.url, clients_gateway.master_key,
                                    {"model": "echo", "messages": [{"role": "user", "content": "a b c"}]}))
