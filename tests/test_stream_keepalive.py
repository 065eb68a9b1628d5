"""SSE keep-alive during a long prefill (issue 12): a stream whose first chunk takes longer than
`stream_keepalive` is committed as 200 SSE with a keep-alive every as many seconds (an SSE comment;
Anthropic's `ping` event on the Messages routes) until it starts; a failure after that arrives in
the stream in the dialect's format; retries and fallbacks still run, before and after the commit.
A real Keystile in front of tests/runaway_upstream.py (`prefill-<s>` waits s seconds), driven by
httpx and the openai and anthropic SDKs."""

from __future__ import annotations

import time

import anthropic
import httpx
import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .runaway_upstream import RunawayUpstream
from .servers import Keystile

KEEPALIVE = 0.5
CHAT = {"messages": [{"role": "user", "content": "hi"}], "stream": True}


def _config(slow: RunawayUpstream, **settings) -> dict:
    def entry(public: str, target: str) -> dict:
        return {"model_name": public, "litellm_params": {"model": f"openai/{target}", "api_base": slow.base_url,
                                                         "api_key": "k"}}
    return {"model_list": [entry("slow", "prefill-2"), entry("slowfail", "prefillfail-1.2"),
                           entry("quickfail", "prefillfail-0"), entry("quick", "prefill-0"),
                           entry("fallback-now", "prefillfail-0"), entry("fallback-late", "prefillfail-1.2")],
            "keystile_settings": {"num_retries": 0, "fallbacks": [{"fallback-now": ["quick"]},
                                                                  {"fallback-late": ["quick"]}], **settings}}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, runaway):
    with Keystile(tmp_path_factory.mktemp("keepalive"), _config(runaway, stream_keepalive=KEEPALIVE)) as server:
        yield server


def _raw(gw: Keystile, path: str, body: dict, **headers: str) -> tuple[int, float, list[str]]:
    """(status, seconds until the answer's head, the answer's lines without blank ones)."""
    started = time.monotonic()
    with httpx.stream("POST", gw.url + path, json=body, timeout=30,
                      headers={"Authorization": f"Bearer {gw.master_key}", **headers}) as r:
        head = time.monotonic() - started
        return r.status_code, head, [line for line in r.iter_lines() if line]


def test_long_prefill_gets_keepalive_comments(gateway):
    status, head, lines = _raw(gateway, "/v1/chat/completions", {"model": "slow", **CHAT})
    assert status == 200 and head < 1.5  # committed after ~0.5 s, not after the 2 s prefill
    first_data = next(i for i, line in enumerate(lines) if line.startswith("data: "))
    assert first_data >= 3 and lines[:first_data] == [": keep-alive"] * first_data
    assert lines[-1] == "data: [DONE]" and ": keep-alive" not in lines[first_data:]
    chunks = [orjson.loads(line[6:]) for line in lines[first_data:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "one two three"
    # The SDK reads through the comments.
    stream = openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.master_key, max_retries=0) \
        .chat.completions.create(model="slow", **CHAT)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "one two three"


def test_quick_stream_has_no_keepalive_and_errors_keep_their_status(gateway):
    status, _, lines = _raw(gateway, "/v1/chat/completions", {"model": "quick", **CHAT})
    assert status == 200 and not any(line.startswith(":") for line in lines)
    status, _, lines = _raw(gateway, "/v1/chat/completions", {"model": "quickfail", **CHAT})
    assert status >= 500 and "upstream fell over" in lines[0]  # nothing was committed: a plain error answer


def test_failure_after_the_commit_is_an_in_stream_error(gateway):
    status, _, lines = _raw(gateway, "/v1/chat/completions", {"model": "slowfail", **CHAT})
    assert status == 200 and lines[0] == ": keep-alive"
    error = orjson.loads(lines[-1].removeprefix("data: "))["error"]
    assert "upstream fell over" in error["message"]
    with pytest.raises(openai.APIError, match="upstream fell over"):
        list(openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.master_key, max_retries=0)
             .chat.completions.create(model="slowfail", **CHAT))
    status, _, lines = _raw(gateway, "/v1/messages", {"model": "slowfail", "max_tokens": 5, **CHAT},
                            **{"anthropic-version": "2023-06-01"})
    assert status == 200 and lines[:2] == ["event: ping", 'data: {"type":"ping"}']
    assert lines[-2] == "event: error" and orjson.loads(lines[-1][6:])["error"]["type"] == "api_error"
    status, _, lines = _raw(gateway, "/v1/responses", {"model": "slowfail", "input": "hi", "stream": True})
    assert status == 200 and lines[0] == ": keep-alive" and lines[-2] == "event: error"
    assert "upstream fell over" in orjson.loads(lines[-1][6:])["message"]


def test_fallbacks_run_before_and_after_the_commit(gateway):
    status, _, lines = _raw(gateway, "/v1/chat/completions", {"model": "fallback-now", **CHAT})
    assert status == 200 and lines[0].startswith("data: ") and lines[-1] == "data: [DONE]"
    status, _, lines = _raw(gateway, "/v1/chat/completions", {"model": "fallback-late", **CHAT})
    assert status == 200 and lines[0] == ": keep-alive" and lines[-1] == "data: [DONE]"
    assert '"one"' in "".join(lines)


def test_anthropic_pings_before_message_start(gateway):
    status, head, lines = _raw(gateway, "/v1/messages", {"model": "slow", "max_tokens": 5, **CHAT},
                               **{"anthropic-version": "2023-06-01"})
    assert status == 200 and head < 1.5
    start = lines.index("event: message_start")
    assert start >= 6 and lines[:start] == ["event: ping", 'data: {"type":"ping"}'] * (start // 2)
    client = anthropic.Anthropic(base_url=gateway.url, api_key=gateway.master_key, max_retries=0)
    with client.messages.stream(model="slow", max_tokens=5, messages=CHAT["messages"]) as s:
        assert "".join(s.text_stream) == "one two three"


def _metric(gw: Keystile, name: str, **labels: str) -> float:
    r = httpx.get(gw.url + "/metrics", headers={"Authorization": f"Bearer {gw.master_key}"})
    return sum(s.value for f in text_string_to_metric_families(r.text) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_client_gone_during_keepalives_ends_the_call(gateway):
    """A client that hangs up after the commit, before the first chunk: the call ends then, as a 499,
    not once the 2 s prefill is over, and nothing stays in flight."""
    gone_before = _metric(gateway, "keystile_requests_total", model="slow", status="499")
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json={"model": "slow", **CHAT}, timeout=30,
                      headers={"Authorization": f"Bearer {gateway.master_key}"}) as r:
        assert next(line for line in r.iter_lines() if line) == ": keep-alive"
    closed = time.monotonic()
    while _metric(gateway, "keystile_requests_total", model="slow", status="499") == gone_before:
        assert time.monotonic() - closed < 1.0, "the call went on after its client had gone"
        time.sleep(0.05)
    assert _metric(gateway, "keystile_requests_in_flight") == 0
    assert _metric(gateway, "keystile_streams_in_flight") == 0


def test_keepalive_set_from_the_environment(tmp_path, runaway):
    with Keystile(tmp_path, _config(runaway, stream_keepalive=30), env={"KEYSTILE_STREAM_KEEPALIVE": "0.3"}) as gw:
        status, head, lines = _raw(gw, "/v1/chat/completions", {"model": "slow", **CHAT})
    assert status == 200 and head < 1.0 and lines.count(": keep-alive") >= 5
