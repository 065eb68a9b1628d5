"""Anthropic Messages to `anthropic/…` deployments: the body relayed unchanged (only `model` named
the upstream's way), anthropic-version / anthropic-beta forwarded, answers, events and errors as the
upstream sent them, usage recorded; a model with a non-Anthropic fallback is translated instead."""

from __future__ import annotations

import time

import anthropic
import httpx
import pytest

from .anthropic_upstream import FakeAnthropic
from .conftest import model_entry
from .servers import Keystile


@pytest.fixture(scope="module")
def claude_upstream():
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, claude_upstream, upstream):
    def claude(public: str, target: str) -> dict:
        return {"model_name": public, "litellm_params": {"model": f"anthropic/{target}",
                                                          "api_base": claude_upstream.base_url,
                                                          "api_key": "anthropic-secret"}}
    config = {"model_list": [claude("claude-sonnet", "claude-ok-sonnet"), claude("overloaded", "claude-overloaded"),
                             claude("too-long", "claude-too-long"), claude("limited", "claude-limited"),
                             claude("mixed", "claude-ok-mixed"), model_entry(upstream, "echo", "echo-upstream")],
              "keystile_settings": {"fallbacks": [{"mixed": ["echo"]}]}}
    with Keystile(tmp_path_factory.mktemp("anthropic-relay"), config) as server:
        yield server


@pytest.fixture
def client(gateway):
    return anthropic.Anthropic(base_url=gateway.url, api_key=gateway.master_key, max_retries=0,
                               default_headers={"anthropic-beta": "prompt-caching-2024-07-31,context-1m-2025-08-07"})


BODY = {"model": "claude-sonnet", "max_tokens": 100, "messages": [{"role": "user", "content": [
    {"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}],
    "thinking": {"type": "enabled", "budget_tokens": 2048}}
EXTRA = {"context_management": {"edits": []}, "some_future_field": {"kept": True}}  # fields the SDK does not name


def test_body_relayed_unchanged_with_headers(client, claude_upstream):
    m = client.messages.create(**BODY, extra_body=EXTRA)
    assert m.id == "msg_up_1" and m.content[0].text == "Hello from Claude." and m.model == "claude-ok-sonnet"
    assert m.usage.cache_read_input_tokens == 5
    assert claude_upstream.requests[-1] == {**BODY, **EXTRA, "model": "claude-ok-sonnet"}
    headers = claude_upstream.headers[-1]
    assert headers["anthropic-version"] == "2023-06-01" and headers["x-api-key"] == "anthropic-secret"
    assert headers["anthropic-beta"] == "prompt-caching-2024-07-31,context-1m-2025-08-07"
    assert "authorization" not in headers  # the caller's gateway key stays here


def test_stream_relayed_event_by_event(client, gateway):
    with client.messages.stream(**BODY) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_message()
    assert final.content[0].text == "Hello from Claude." and final.usage.output_tokens == 6
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    with httpx.stream("POST", gateway.url + "/v1/messages", json={**BODY, **EXTRA, "stream": True},
                      headers={"x-api-key": gateway.master_key, "anthropic-version": "2023-06-01"}) as r:
        lines = [line for line in r.iter_lines() if line]
    names = [line[7:] for line in lines if line.startswith("event: ")]
    assert names == ["message_start", "content_block_start", "ping", "content_block_delta", "content_block_delta",
                     "content_block_delta", "content_block_stop", "message_delta", "message_stop"]


def test_upstream_errors_come_back_unmodified(client, gateway):
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(**{**BODY, "model": "too-long"})
    assert e.value.body == {"type": "error", "error": {
        "type": "invalid_request_error", "message": "prompt is too long: 250000 tokens > 200000 maximum"}}
    r = httpx.post(gateway.url + "/v1/messages", json={**BODY, "model": "overloaded"},
                   headers={"x-api-key": gateway.master_key, "anthropic-version": "2023-06-01"})
    assert r.status_code == 529 and r.json()["error"] == {"type": "overloaded_error", "message": "Overloaded"}
    r = httpx.post(gateway.url + "/v1/messages", json={**BODY, "model": "limited"},
                   headers={"x-api-key": gateway.master_key, "anthropic-version": "2023-06-01"})
    assert r.status_code == 429 and r.headers["retry-after"] == "7"
    assert r.json()["error"]["type"] == "rate_limit_error"


def test_usage_recorded_with_cache_reads_as_prompt(client, gateway):
    client.messages.create(**{**BODY, "messages": [{"role": "user", "content": "usage please"}]})
    deadline = time.monotonic() + 5
    rows: list = []
    while time.monotonic() < deadline and not rows:
        rows = httpx.get(gateway.url + "/spend/logs", params={"model": "claude-sonnet", "size": 100},
                         headers={"Authorization": f"Bearer {gateway.master_key}"}).json()["data"]
        time.sleep(0.2)
    assert rows[0]["route"] == "/v1/messages" and rows[0]["prompt_tokens"] == 16 and rows[0]["completion_tokens"] == 6


def test_a_model_that_may_fall_back_elsewhere_is_translated(client, claude_upstream):
    before = len(claude_upstream.requests)
    m = client.messages.create(model="mixed", max_tokens=50, messages=[{"role": "user", "content": "hi"}])
    # litellm's Anthropic client took the translated request to the same fake upstream
    assert m.content[0].text == "Hello from Claude." and m.id.startswith("msg_") and m.id != "msg_up_1"
    sent = claude_upstream.requests[before]
    assert sent["model"] == "claude-ok-mixed" and "thinking" not in sent
