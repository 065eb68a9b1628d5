"""Budgets against an upstream that ignores `max_tokens` (issue 11): a stream whose tokens a budget
or a tpm limit counts is cut at the completion tokens its admission reserved and ends as a model
that reached its limit does, in each dialect's terms; the call is charged what was relayed, so
concurrent streams cannot spend past a budget. A real Keystile in front of tests/runaway_upstream.py, driven by the openai and anthropic
SDKs and httpx."""

from __future__ import annotations

import asyncio
import time

import anthropic
import httpx
import openai
import pytest

from .servers import Keystile

P_OUT = 1e-3
MAX_TOKENS = 10


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, runaway):
    def entry(public: str, target: str) -> dict:
        return {"model_name": public, "litellm_params": {"model": f"openai/{target}", "api_base": runaway.base_url,
                                                         "api_key": "k"},
                "model_info": {"input_cost_per_token": 0.0, "output_cost_per_token": P_OUT}}
    config = {"model_list": [entry("runaway", "runaway"), entry("runaway-cheap", "runaway-cheap")]}
    with Keystile(tmp_path_factory.mktemp("cutoff"), config) as server:
        yield server


@pytest.fixture(scope="module")
def limited(gateway) -> str:
    """A key with a tpm limit: its calls' tokens are counted, so their streams are cut."""
    r = httpx.post(gateway.url + "/key/generate", json={"tpm_limit": 1_000_000},
                   headers={"Authorization": f"Bearer {gateway.master_key}"}, timeout=10)
    return r.json()["key"]


def _oai(gw: Keystile, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


def _logs(gw: Keystile, answered: int = 0, **params) -> list[dict]:
    """The usage rows `params` select, once there is one (and `answered` of them have status 200)."""
    deadline = time.monotonic() + 10
    while True:
        rows = httpx.get(gw.url + "/spend/logs", params={"size": 1000, **params}, timeout=10,
                         headers={"Authorization": f"Bearer {gw.master_key}"}).json()["data"]
        if (rows and sum(r["status"] == 200 for r in rows) >= answered) or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def test_chat_stream_is_cut_at_max_tokens(gateway, runaway, limited):
    stream = _oai(gateway, limited).chat.completions.create(
        model="runaway", max_tokens=MAX_TOKENS, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "count"}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert runaway.requests[-1]["max_tokens"] == MAX_TOKENS  # asked, and ignored by the upstream
    assert text == "".join(f" w{i}" for i in range(1, MAX_TOKENS + 1)), text  # ten one-word chunks
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == MAX_TOKENS
    row = _logs(gateway, request_id=stream.response.headers["x-request-id"])[0]
    assert row["completion_tokens"] == MAX_TOKENS and row["cost"] == pytest.approx(MAX_TOKENS * P_OUT)


def test_completions_stream_is_cut_at_max_tokens(gateway, limited):
    chunks = list(_oai(gateway, limited).completions.create(model="runaway", prompt="count", max_tokens=4, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == " w1 w2 w3 w4"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_anthropic_stream_ends_with_max_tokens(gateway, limited):
    client = anthropic.Anthropic(base_url=gateway.url, api_key=limited, max_retries=0)
    with client.messages.stream(model="runaway", max_tokens=MAX_TOKENS,
                                messages=[{"role": "user", "content": "count"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert len(text) <= 4 * MAX_TOKENS and text.startswith(" w1 w2")
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == MAX_TOKENS


def test_responses_stream_ends_incomplete(gateway, limited):
    with _oai(gateway, limited).responses.stream(model="runaway", input="count", max_output_tokens=MAX_TOKENS) as s:
        final = [e for e in s][-1].response  # the SDK keeps a final response for response.completed only
    assert final.status == "incomplete" and final.incomplete_details.reason == "max_output_tokens"
    assert final.usage.output_tokens == MAX_TOKENS and len(final.output_text) <= 4 * MAX_TOKENS


def test_uncounted_stream_is_relayed_as_the_upstream_sends_it(gateway):
    """Nothing counts the master key's tokens: its chunks are not parsed, the upstream's usage is charged."""
    chunks = list(_oai(gateway, gateway.master_key).chat.completions.create(
        model="runaway", max_tokens=MAX_TOKENS, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "count"}]))
    assert chunks[-1].usage.completion_tokens == 100


async def _stream(client: httpx.AsyncClient, url: str, key: str) -> int:
    body = {"model": "runaway-cheap", "max_tokens": MAX_TOKENS, "stream": True,
            "messages": [{"role": "user", "content": "count"}]}
    async with client.stream("POST", url + "/v1/chat/completions", json=body,
                             headers={"Authorization": f"Bearer {key}"}) as r:
        await r.aread()
        return r.status_code


async def test_budget_bounded_under_concurrent_streams(gateway):
    """A budget of three requests' maximum cost (max_tokens x output price) ends bounded however many
    streams race, also when the upstream writes ten times max_tokens (it was 8.2x the budget)."""
    cap = MAX_TOKENS * P_OUT
    budget = 3 * cap
    r = httpx.post(gateway.url + "/key/generate", json={"max_budget": budget},
                   headers={"Authorization": f"Bearer {gateway.master_key}"}, timeout=10)
    key = r.json()["key"]
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=30)) as client:
        first = await asyncio.gather(*(_stream(client, gateway.url, key) for _ in range(20)))
        later = [await _stream(client, gateway.url, key) for _ in range(5)]
    assert first.count(200) == 3 and later == [429] * 5, (first, later)
    rows = [r for r in _logs(gateway, answered=3, api_key=key) if r["status"] == 200]
    assert len(rows) == 3 and all(r["completion_tokens"] == MAX_TOKENS for r in rows)
    deadline = time.monotonic() + 10
    while (spend := httpx.get(gateway.url + "/key/info", headers={"Authorization": f"Bearer {key}"},
                              timeout=10).json()["info"]["spend"]) < budget - 1e-9 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert spend == pytest.approx(budget) and spend <= budget + 1e-9
