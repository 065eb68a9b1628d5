"""What the clients teams use (Anthropic Messages, Responses, chat streams with include_usage,
base64 embeddings, rerank) on the real SmolLM2 through llama.cpp, behind a real Keystile server,
driven by the `anthropic` and `openai` SDKs. Tool calls are tested against the fake upstream
(test_anthropic.py, test_responses.py): this model does not call tools."""

from __future__ import annotations

import base64
import struct

import anthropic
import httpx
import openai
import pytest

from .test_local_model import local  # noqa: F401  (the fixture: a gateway serving SmolLM2)
from .test_stream_usage import check_usage_chunks, usage_stream


def test_anthropic_messages(local):
    client = anthropic.Anthropic(base_url=local.url, api_key=local.master_key, max_retries=0, timeout=120)
    ask = [{"role": "user", "content": "Say hello."}]
    m = client.messages.create(model="smollm2", max_tokens=12, temperature=0, system="You are kind.", messages=ask)
    assert m.content[0].text.strip() and m.usage.input_tokens > 0 and 0 < m.usage.output_tokens <= 12
    with client.messages.stream(model="smollm2", max_tokens=12, temperature=0, messages=ask) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.strip() and final.content[0].text == text and final.usage.output_tokens > 0
    assert final.stop_reason in ("end_turn", "max_tokens")
    # The model's own tokenizer: 40 one-letter words are ~40 tokens; the 4-characters estimate says 20.
    counted = client.messages.count_tokens(model="smollm2", messages=[{"role": "user", "content": "a " * 40}])
    assert 40 <= counted.input_tokens < 60


def test_responses(local):
    client = openai.OpenAI(base_url=local.url + "/v1", api_key=local.master_key, max_retries=0, timeout=120)
    r = client.responses.create(model="smollm2", instructions="You are kind.", input="Say hello.",
                                max_output_tokens=12, temperature=0)
    assert r.output_text.strip() and r.usage.input_tokens > 0 and 0 < r.usage.output_tokens <= 12
    with client.responses.stream(model="smollm2", input="Count to twenty.", max_output_tokens=4) as stream:
        kinds = [e.type for e in stream]
    # Cut short by max_output_tokens: OpenAI's `response.incomplete`, whose response the helper keeps.
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.incomplete"
    assert "response.output_text.delta" in kinds


def test_include_usage_on_the_local_model(local):
    check_usage_chunks(usage_stream(local.url, local.master_key, {
        "model": "smollm2", "max_tokens": 8, "messages": [{"role": "user", "content": "Say hello."}]}))


def test_rerank_is_a_clear_400_on_the_local_model(local):
    r = httpx.post(local.url + "/v1/rerank", headers={"Authorization": f"Bearer {local.master_key}"},
                   json={"model": "smollm2", "query": "cat", "documents": ["a cat", "a dog"]}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported"
    assert "rerank" in r.json()["error"]["message"]


def test_embeddings_base64_and_float(local):
    """The Node SDK (Continue) asks for base64 by default; the Python SDK decodes it when it chose it."""
    client = openai.OpenAI(base_url=local.url + "/v1", api_key=local.master_key, max_retries=0, timeout=120)
    floats = client.embeddings.create(model="smollm2", input="hello", encoding_format="float").data[0].embedding
    r = httpx.post(local.url + "/v1/embeddings", headers={"Authorization": f"Bearer {local.master_key}"},
                   json={"model": "smollm2", "input": "hello", "encoding_format": "base64"}, timeout=60)
    packed = r.json()["data"][0]["embedding"]
    assert isinstance(packed, str)
    decoded = struct.unpack(f"<{len(floats)}f", base64.b64decode(packed))
    assert decoded == pytest.approx(floats, rel=1e-6)
    assert client.embeddings.create(model="smollm2", input="hello").data[0].embedding == pytest.approx(floats, rel=1e-6)
