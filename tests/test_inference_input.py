"""Inference bodies that used to answer 500: a text part whose text is not a string, and token
counts so large that the Redis limiter's script failed after counting the request. Both are a
400 naming the field, refused before admission (nothing counted)."""

from __future__ import annotations

import time

import httpx
import pytest

from .conftest import relay_config
from .servers import Keystile


def chat(server: Keystile, key: str, **fields) -> httpx.Response:
    body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}], **fields}
    return httpx.post(server.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"},
                      timeout=10)


@pytest.mark.parametrize("part", [{"type": "text", "text": 5}, {"type": "text", "text": True},
                                  {"type": "text"}, {"type": 3}, {"text": "no type"}])
def test_content_parts_are_validated(relay, part):
    r = chat(relay, relay.master_key, messages=[{"role": "user", "content": [part]}])
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"].startswith("messages.0.content")


def test_content_parts_of_other_kinds_pass_through(relay):
    parts = [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]
    r = chat(relay, relay.master_key, messages=[{"role": "user", "content": parts}])
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("value", [10**17, 2**31, 1e17])
def test_token_counts_are_bounded(relay, field, value):
    r = chat(relay, relay.master_key, **{field: value})
    assert r.status_code == 400 and r.json()["error"]["param"] == field


def test_huge_max_tokens_with_redis_limits_counts_nothing(tmp_path, upstream, redis_url):
    with Keystile(tmp_path, relay_config(upstream), env={"REDIS_URL": redis_url}) as server:
        h = {"Authorization": f"Bearer {server.master_key}"}
        key = httpx.post(server.url + "/key/generate", json={"rpm_limit": 2}, headers=h).json()["key"]
        if 60 - time.time() % 60 < 5:  # rpm windows are whole minutes: count these in one
            time.sleep(60 - time.time() % 60 + 0.05)
        for _ in range(3):
            r = chat(server, key, max_tokens=10**17)
            assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
        assert [chat(server, key, max_tokens=10).status_code for _ in range(3)] == [200, 200, 429]
