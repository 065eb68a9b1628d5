"""Anthropic Messages on the core (issue 12): `count_tokens` for an `anthropic/…` model is Anthropic's
own count (relayed with anthropic-version / -beta), and on the translated path (any other backend)
`stop_sequences` are applied by the gateway, so an answer says `stop_reason: "stop_sequence"` and
which one matched. The anthropic SDK against a live Keystile in front of tests/anthropic_upstream.py,
tests/runaway_upstream.py (`stopword` writes "alpha beta STOP gamma delta", ignoring `stop`) and
the local SmolLM2."""

from __future__ import annotations

import anthropic
import orjson
import pytest

from .runaway_upstream import STOPWORD_TEXT
from .servers import Keystile
from .test_local_model import local  # noqa: F401  (the fixture: a gateway serving SmolLM2)

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, fake_anthropic, runaway):
    config = {"model_list": [
        {"model_name": "haiku", "litellm_params": {"model": "anthropic/claude-haiku-4-5",
                                                   "api_base": fake_anthropic.base_url, "api_key": "upstream-key"}},
        {"model_name": "words", "litellm_params": {"model": "openai/stopword", "api_base": runaway.base_url,
                                                   "api_key": "k"}}]}
    with Keystile(tmp_path_factory.mktemp("anthropic-core"), config) as server:
        yield server


@pytest.fixture(scope="module")
def client(gateway):
    return anthropic.Anthropic(base_url=gateway.url, api_key=gateway.master_key, max_retries=0)


def test_count_tokens_is_relayed_to_anthropic(client, fake_anthropic):
    counted = client.messages.count_tokens(model="haiku", system="Be brief.", messages=HI,
                                           extra_headers={"anthropic-beta": "token-counting-2024-11-01"})
    sent, headers = fake_anthropic.requests[-1], fake_anthropic.headers[-1]
    assert sent == {"model": "claude-haiku-4-5", "system": "Be brief.", "messages": HI}
    assert counted.input_tokens == len(orjson.dumps(sent)) // 4  # the fake's count, not the gateway's estimate
    assert headers["anthropic-version"] == "2023-06-01" and headers["anthropic-beta"] == "token-counting-2024-11-01"
    assert headers["x-api-key"] == "upstream-key"


@pytest.mark.parametrize(("stops", "text", "matched"), [
    (["STOP", "gamma"], "alpha beta ", "STOP"),
    (["gamma", "ta ST"], "alpha be", "ta ST"),  # across two chunks, and before a later one
    (["zzz", "delta!"], STOPWORD_TEXT, None),  # "delta" was held back as a possible start, then sent
])
def test_stop_sequence_on_the_translated_path(client, runaway, stops, text, matched):
    m = client.messages.create(model="words", max_tokens=50, stop_sequences=stops, messages=HI)
    assert "stop" not in runaway.requests[-1]  # applied by the gateway
    with client.messages.stream(model="words", max_tokens=50, stop_sequences=stops, messages=HI) as s:
        streamed = "".join(s.text_stream)
        final = s.get_final_message()
    for message in (m, final):
        assert message.content[0].text == text
        assert (message.stop_reason, message.stop_sequence) == \
            (("stop_sequence", matched) if matched else ("end_turn", None))
        assert message.usage.output_tokens > 0
    assert streamed == text


def test_stop_sequence_on_the_local_model(local):
    client = anthropic.Anthropic(base_url=local.url, api_key=local.master_key, max_retries=0, timeout=120)
    stops = ["e", "a", "o"]
    ask = dict(model="smollm2", max_tokens=40, temperature=0, stop_sequences=stops,
               messages=[{"role": "user", "content": "Tell me about the weather."}])
    m = client.messages.create(**ask)
    with client.messages.stream(**ask) as s:
        final = s.get_final_message()
    for message in (m, final):
        assert message.stop_reason == "stop_sequence" and message.stop_sequence in stops
        text = "".join(b.text for b in message.content if b.type == "text")
        assert not any(stop in text for stop in stops), text
