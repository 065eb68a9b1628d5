"""What real clients met at the relay's edges (issue 9): usage-only chunks of upstreams that write
JSON with spaces, an upstream's Retry-After, the x-ratelimit-* headers on 429s, the `stop` limit."""

from __future__ import annotations

import httpx
import openai
import pytest

from .conftest import model_entry
from .servers import Keystile

ASK = [{"role": "user", "content": "one two three"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory, upstream):
    config = {"model_list": [model_entry(upstream, "spaced", "spaced-upstream"),
                             model_entry(upstream, "ratelimited", "ratelimited"),
                             model_entry(upstream, "echo", "echo-upstream")],
              "keystile_settings": {"num_retries": 0}}
    with Keystile(tmp_path_factory.mktemp("edges"), config) as s:
        yield s


def client(server: Keystile, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key or server.master_key, max_retries=0, timeout=30)


def limited_key(server: Keystile, **limits) -> str:
    r = httpx.post(server.url + "/key/generate", json=limits,
                   headers={"Authorization": f"Bearer {server.master_key}"}, timeout=10)
    r.raise_for_status()
    return r.json()["key"]


def test_usage_chunk_of_a_spaced_json_upstream_is_kept_from_clients_that_did_not_ask(server):
    stream = client(server).chat.completions.create(model="spaced", messages=ASK, stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)  # the README's snippet
    assert text == "echo: one two three"

    chunks = list(client(server).chat.completions.create(model="spaced", messages=ASK, stream=True,
                                                         stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4
    assert all(c.choices for c in chunks[:-1])


def test_upstream_429_keeps_its_retry_after_and_the_keys_rate_headers(server):
    key = limited_key(server, rpm_limit=100)
    with pytest.raises(openai.RateLimitError) as refused:
        client(server, key).chat.completions.create(model="ratelimited", messages=ASK)
    error = refused.value
    assert error.code == "upstream_rate_limited" and "Rate limit reached" in error.message
    headers = error.response.headers
    assert headers["retry-after"] == "3"
    assert headers["x-ratelimit-limit-requests"] == "100" and headers["x-ratelimit-remaining-requests"] == "99"


def test_keystiles_own_429_carries_the_refusing_limits_headers(server):
    key = limited_key(server, rpm_limit=1)
    ok = client(server, key).chat.completions.with_raw_response.create(model="echo", messages=ASK)
    assert ok.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(openai.RateLimitError) as refused:
        client(server, key).chat.completions.create(model="echo", messages=ASK)
    headers = refused.value.response.headers
    assert refused.value.code == "rate_limit_exceeded"
    assert headers["x-ratelimit-limit-requests"] == "1" and headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"].endswith("s") and 1 <= int(headers["retry-after"]) <= 60


@pytest.mark.parametrize("stop, message", [
    ([f"s{i}" for i in range(17)], "at most 16 stop sequences are allowed, got 17"),
    ([1, 2], "must be a string or a list of strings"),
    (5, "must be a string or a list of strings"),
])
def test_stop_errors_name_the_field_and_the_rule(server, stop, message):
    with pytest.raises(openai.BadRequestError) as refused:
        client(server).chat.completions.create(model="echo", messages=ASK, stop=stop)
    assert refused.value.body["param"] == "stop" and message in refused.value.message
    sixteen = client(server).chat.completions.create(model="echo", messages=ASK, stop=[f"s{i}" for i in range(16)])
    assert sixteen.choices[0].message.content
