"""The OpenAI routes through a real Keystile server to a real (small) OpenAI-compatible upstream,
driven by the real openai SDK."""

from __future__ import annotations

import httpx
import openai
import pytest


@pytest.fixture
def client(relay):
    return openai.OpenAI(base_url=relay.url + "/v1", api_key=relay.master_key, max_retries=0, timeout=10)


@pytest.fixture
def aclient(relay):
    return openai.AsyncOpenAI(base_url=relay.url + "/v1", api_key=relay.master_key, max_retries=0, timeout=10)


def test_chat_json_rewrites_model_and_keeps_usage(client, upstream):
    r = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hello there"}])
    assert r.choices[0].message.content == "echo: hello there"
    assert r.model == "echo"
    assert r.usage.prompt_tokens == 7 and r.usage.completion_tokens == 3
    assert upstream.requests[-1]["model"] == "echo-upstream"
    assert upstream.headers[-1]["authorization"] == "Bearer upstream-secret"


def test_request_fields_pass_through_untouched(client, upstream):
    client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "x"}], temperature=0.3, top_p=0.9, max_tokens=5,
        stop=["\n"], seed=7, n=1, presence_penalty=0.1, frequency_penalty=0.2, user="u1",
        response_format={"type": "json_object"}, max_completion_tokens=9,
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}], tool_choice="auto",
        extra_body={"top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1, "vendor_field": {"a": [1, 2]}},
    )
    sent = upstream.requests[-1]
    for field, value in {"temperature": 0.3, "top_p": 0.9, "max_tokens": 5, "stop": ["\n"], "seed": 7,
                         "presence_penalty": 0.1, "frequency_penalty": 0.2, "user": "u1", "top_k": 40,
                         "min_p": 0.05, "repetition_penalty": 1.1, "vendor_field": {"a": [1, 2]},
                         "max_completion_tokens": 9, "tool_choice": "auto",
                         "response_format": {"type": "json_object"}}.items():
        assert sent[field] == value, field
    assert sent["tools"][0]["function"]["name"] == "f"


def test_chat_stream_relays_chunks_and_hides_usage_unless_asked(client):
    chunks = list(client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "a b c"}],
                                                 stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "echo: a b c"
    assert all(c.model == "echo" for c in chunks)
    assert all(c.usage is None for c in chunks)


def test_chat_stream_include_usage(client):
    chunks = list(client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "a b"}],
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3


async def test_async_client_json_and_stream(aclient):
    r = await aclient.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == "echo: hi"
    stream = await aclient.chat.completions.create(model="echo", messages=[{"role": "user", "content": "x y"}],
                                                   stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert text == "echo: x y"


def test_completions_json_and_stream(client):
    r = client.completions.create(model="echo", prompt="once upon")
    assert r.choices[0].text == "echo: once upon" and r.model == "echo"
    chunks = list(client.completions.create(model="echo", prompt="p q", stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "echo: p q"
    assert chunks[-1].usage.total_tokens == 10


def test_embeddings(client):
    r = client.embeddings.create(model="echo", input=["a", "bb"])
    assert [d.index for d in r.data] == [0, 1] and r.model == "echo"


def test_models_list_and_get(client):
    ids = [m.id for m in client.models.list()]
    assert "echo" in ids and "failing" in ids
    assert client.models.retrieve("echo").id == "echo"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_openai_prefix(relay):
    c = openai.OpenAI(base_url=relay.url + "/openai/v1", api_key=relay.master_key, max_retries=0)
    assert c.chat.completions.create(model="echo", messages=[{"role": "user", "content": "p"}]).model == "echo"


def test_health_routes(relay):
    assert httpx.get(relay.url + "/health/liveliness").json() == {"status": "alive"}
    ready = httpx.get(relay.url + "/health/readiness")
    assert ready.status_code == 200 and ready.json()["db"] == "connected"
    assert httpx.get(relay.url + "/health").status_code == 401
    h = httpx.get(relay.url + "/health", headers={"Authorization": f"Bearer {relay.master_key}"}, timeout=10).json()
    assert h["healthy_count"] >= 1 and all("api_key" not in str(e) for e in h["healthy_endpoints"])


def test_docs_and_openapi(relay):
    assert httpx.get(relay.url + "/docs").status_code == 200
    paths = httpx.get(relay.url + "/openapi.json").json()["paths"]
    assert "/v1/chat/completions" in paths and "/v1/embeddings" in paths
