"""Cache-read (and cache-write) tokens as their own usage fields (issue 12): parsed from OpenAI's
`usage.prompt_tokens_details.cached_tokens` and Anthropic's `cache_read_input_tokens` /
`cache_creation_input_tokens`, stored in spend_logs (SQLite and Postgres), shown by /spend/logs,
and priced at litellm's cache prices instead of as full prompt tokens. A real Keystile in front of
tests/runaway_upstream.py (OpenAI-compatible) and tests/anthropic_upstream.py (Anthropic)."""

from __future__ import annotations

import time

import anthropic
import httpx
import openai
import pytest

from proxy.accounting.prices import PriceMap

from .anthropic_upstream import CACHE_WRITE, USAGE
from .runaway_upstream import CACHED_USAGE
from .servers import Keystile


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def gateway(request, tmp_path_factory, runaway, fake_anthropic):
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    config = {"model_list": [
        {"model_name": "gpt", "litellm_params": {"model": "openai/gpt-4o", "api_base": runaway.base_url,
                                                 "api_key": "k"}},
        {"model_name": "haiku", "litellm_params": {"model": "anthropic/claude-haiku-4-5",
                                                   "api_base": fake_anthropic.base_url, "api_key": "k"}}]}
    with Keystile(tmp_path_factory.mktemp(f"cache-{request.param}"), config, database_url=url) as server:
        yield server


def _row(gw: Keystile, request_id: str) -> tuple[dict, dict]:
    """The request's /spend/logs row in Keystile's pages and in LiteLLM's list."""
    headers = {"Authorization": f"Bearer {gw.master_key}"}
    deadline = time.monotonic() + 10
    while not (rows := httpx.get(gw.url + "/spend/logs", params={"request_id": request_id, "size": 5},
                                 headers=headers, timeout=10).json()["data"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    litellm = httpx.get(gw.url + "/spend/logs", params={"request_id": request_id}, headers=headers, timeout=10).json()
    return rows[0], litellm[0]


def test_openai_cached_tokens_are_recorded_and_priced(gateway):
    price = PriceMap().price("openai/gpt-4o")
    assert price.cache_read_input_token_cost is not None
    assert price.cache_read_input_token_cost < price.input_cost_per_token
    cached = CACHED_USAGE["prompt_tokens_details"]["cached_tokens"]
    expected = ((CACHED_USAGE["prompt_tokens"] - cached) * price.input_cost_per_token
                + cached * price.cache_read_input_token_cost + CACHED_USAGE["completion_tokens"] * price.output_cost_per_token)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.master_key, max_retries=0)
    answer = client.chat.completions.with_raw_response.create(model="gpt", messages=[{"role": "user", "content": "hi"}])
    stream = client.chat.completions.create(model="gpt", stream=True, messages=[{"role": "user", "content": "hi"}])
    list(stream)
    for request_id in (answer.headers["x-request-id"], stream.response.headers["x-request-id"]):
        row, litellm = _row(gateway, request_id)
        assert (row["prompt_tokens"], row["cache_read_tokens"], row["cache_creation_tokens"]) == (1000, cached, 0)
        assert row["cost"] == pytest.approx(expected)
        assert row["cost"] < CACHED_USAGE["prompt_tokens"] * price.input_cost_per_token  # no longer full price
        assert litellm["metadata"]["cache_read_tokens"] == cached and litellm["spend"] == pytest.approx(expected)


def test_anthropic_cache_reads_and_writes_are_recorded_and_priced(gateway):
    price = PriceMap().price("anthropic/claude-haiku-4-5")
    read, write = USAGE["cache_read_input_tokens"], CACHE_WRITE
    expected = (USAGE["input_tokens"] * price.input_cost_per_token + read * price.cache_read_input_token_cost
                + write * price.cache_creation_input_token_cost + 6 * price.output_cost_per_token)
    client = anthropic.Anthropic(base_url=gateway.url, api_key=gateway.master_key, max_retries=0)
    system = [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}]
    made = client.messages.with_raw_response.create(model="haiku", max_tokens=20, system=system,
                                                    messages=[{"role": "user", "content": "hi"}])
    with client.messages.stream(model="haiku", max_tokens=20, system=system,
                                messages=[{"role": "user", "content": "hi"}]) as s:
        s.until_done()
        streamed = s.response.headers["x-request-id"]
    for request_id in (made.headers["x-request-id"], streamed):
        row, _ = _row(gateway, request_id)
        assert (row["prompt_tokens"], row["cache_read_tokens"], row["cache_creation_tokens"]) == \
            (USAGE["input_tokens"] + read + write, read, write)
        assert row["cost"] == pytest.approx(expected)
