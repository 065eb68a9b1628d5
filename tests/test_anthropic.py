"""Anthropic Messages (/v1/messages, count_tokens) translated onto chat, driven by the real
`anthropic` SDK and by the request bodies Claude Code sends, against a live Keystile in front of the
fake upstream (tests/upstream.py). The local model's turn is in tests/test_clients_local.py."""

from __future__ import annotations

import time

import anthropic
import httpx
import pytest

from .captured import CLAUDE_CODE_ANSWER, CLAUDE_CODE_BODY, CLAUDE_CODE_HEADERS, CLAUDE_CODE_PATH
from .sse import events

WEATHER = {"name": "get_weather", "description": "Weather for a place",
           "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}


@pytest.fixture
def client(clients_gateway):
    return anthropic.Anthropic(base_url=clients_gateway.url, api_key=clients_gateway.master_key, max_retries=0)


def _headers(gw, **extra) -> dict:
    return {"x-api-key": gw.master_key, "anthropic-version": "2023-06-01", **extra}


def test_create_translates_onto_chat(client, upstream):
    m = client.messages.create(model="echo", max_tokens=50, system="Be brief.", temperature=0.5, top_p=0.9,
                               stop_sequences=["END"], metadata={"user_id": "user-7"},
                               messages=[{"role": "user", "content": "hello there"}])
    assert m.type == "message" and m.role == "assistant" and m.model == "echo" and m.id.startswith("msg_")
    assert [b.type for b in m.content] == ["text"] and m.content[0].text == "echo: hello there"
    assert m.stop_reason == "end_turn" and m.usage.input_tokens == 7 and m.usage.output_tokens == 3
    sent = upstream.requests[-1]
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}]
    assert (sent["max_tokens"], sent["temperature"], sent["top_p"], sent["user"]) == (50, 0.5, 0.9, "user-7")
    assert "stop" not in sent and sent["stream"] is True  # stop sequences are the gateway's (test_anthropic_core.py)


def test_bearer_token_as_claude_code_sends_it(clients_gateway):
    client = anthropic.Anthropic(base_url=clients_gateway.url, auth_token=clients_gateway.master_key, max_retries=0)
    assert client.messages.create(model="echo", max_tokens=5, messages=[{"role": "user", "content": "hi"}]).content


def test_tool_use_and_result_round_trip(client, upstream):
    m = client.messages.create(model="tools", max_tokens=50, tools=[WEATHER], tool_choice={"type": "any"},
                               messages=[{"role": "user", "content": "Paris?"}])
    assert m.stop_reason == "tool_use" and [b.type for b in m.content] == ["text", "tool_use"]
    use = m.content[1]
    assert (use.id, use.name, use.input) == ("call_abc123", "get_weather", {"q": "Paris?"})
    sent = upstream.requests[-1]
    assert sent["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a place", "parameters": WEATHER["input_schema"]}}]
    assert sent["tool_choice"] == "required"
    m2 = client.messages.create(model="tools", max_tokens=50, tools=[WEATHER], messages=[
        {"role": "user", "content": "Paris?"},
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in m.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                      "content": [{"type": "text", "text": "sunny, 21C"}]}]}])
    assert m2.content[0].text == "the tool said: sunny, 21C" and m2.stop_reason == "end_turn"
    history = upstream.requests[-1]["messages"]
    assert history[1] == {"role": "assistant", "content": "Let me look that up.", "tool_calls": [
        {"id": "call_abc123", "type": "function", "function": {"name": "get_weather", "arguments": '{"q":"Paris?"}'}}]}
    assert history[2] == {"role": "tool", "tool_call_id": "call_abc123", "content": "sunny, 21C"}


def test_image_blocks_become_image_parts(client, upstream):
    client.messages.create(model="echo", max_tokens=5, messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}])
    assert upstream.requests[-1]["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]


def test_stream_events_in_anthropic_order(clients_gateway):
    got = events(clients_gateway.url + "/v1/messages", {
        "model": "tools", "max_tokens": 50, "stream": True, "tools": [WEATHER],
        "messages": [{"role": "user", "content": "Paris?"}]}, _headers(clients_gateway))
    names = [n for n, _ in got]
    assert names[:2] == ["message_start", "ping"]
    assert names[2:] == ["content_block_start"] + ["content_block_delta"] * 5 + ["content_block_stop",
                         "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
                         "message_delta", "message_stop"]
    blocks = [d for n, d in got if n == "content_block_start"]
    assert [b["index"] for b in blocks] == [0, 1]
    assert blocks[1]["content_block"] == {"type": "tool_use", "id": "call_abc123", "name": "get_weather", "input": {}}
    json_parts = [d["delta"]["partial_json"] for n, d in got if n == "content_block_delta" and d["index"] == 1]
    assert "".join(json_parts) == '{"q":"Paris?"}'
    delta = got[-2][1]
    assert delta["delta"]["stop_reason"] == "tool_use" and delta["usage"]["output_tokens"] == 8


def test_sdk_stream_helper(client):
    with client.messages.stream(model="toolsilent", max_tokens=50, tools=[WEATHER],
                                messages=[{"role": "user", "content": "Oslo?"}]) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_message()
    assert "input_json" in kinds and kinds[-1] == "message_stop"
    assert [b.type for b in final.content] == ["tool_use"] and final.content[0].input == {"q": "Oslo?"}
    with client.messages.stream(model="echo", max_tokens=50, messages=[{"role": "user", "content": "a b c"}]) as s:
        assert "".join(s.text_stream) == "echo: a b c"
        assert s.get_final_message().usage.output_tokens == 4


def test_ping_during_a_long_silence(clients_gateway):
    start = time.monotonic()
    got = events(clients_gateway.url + "/v1/messages", {
        "model": "pausing", "max_tokens": 50, "stream": True,
        "messages": [{"role": "user", "content": "wait for it"}]}, _headers(clients_gateway))
    names = [n for n, _ in got]
    assert time.monotonic() - start > 5
    first_text = names.index("content_block_delta")
    assert "ping" in names[first_text:], names  # a ping between the first delta and the rest
    assert names[-1] == "message_stop"


def test_count_tokens(client):
    counted = client.messages.count_tokens(model="echo", system="Be brief.", tools=[WEATHER],
                                           messages=[{"role": "user", "content": "hello there"}])
    assert counted.input_tokens > 5


def test_errors_in_anthropic_shape(clients_gateway, client):
    with pytest.raises(anthropic.NotFoundError) as e:
        client.messages.create(model="nope", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert e.value.body == {"type": "error", "error": {
        "type": "not_found_error", "message": "model 'nope' does not exist or is not served here"}}
    r = httpx.post(clients_gateway.url + "/v1/messages", headers=_headers(clients_gateway),
                   json={"model": "echo", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400 and r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "invalid_request_error" and "max_tokens" in r.json()["error"]["message"]
    r = httpx.post(clients_gateway.url + "/v1/messages", headers={"x-api-key": "sk-wrong"},
                   json={"model": "echo", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert r.headers["x-request-id"]
    with pytest.raises(anthropic.InternalServerError) as e:
        client.messages.create(model="failing", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert e.value.body["error"] == {"type": "api_error", "message": "upstream exploded"}


def test_stream_that_breaks_ends_with_an_error_event(clients_gateway, client):
    got = events(clients_gateway.url + "/v1/messages", {
        "model": "dropping", "max_tokens": 50, "stream": True,
        "messages": [{"role": "user", "content": "one two three four"}]}, _headers(clients_gateway))
    assert got[0][0] == "message_start" and got[-1][0] == "error"
    assert got[-1][1]["error"]["type"] == "api_error"
    with pytest.raises(anthropic.APIStatusError):
        with client.messages.stream(model="dropping", max_tokens=50,
                                    messages=[{"role": "user", "content": "one two three four"}]) as s:
            s.until_done()


def test_models_in_anthropic_shape(clients_gateway, client):
    page = client.models.list()
    ids = [m.id for m in page.data]
    assert "echo" in ids and all(m.type == "model" for m in page.data)
    assert client.models.retrieve("echo").display_name == "echo"
    plain = httpx.get(clients_gateway.url + "/v1/models", headers={"Authorization": f"Bearer {clients_gateway.master_key}"})
    assert plain.json()["object"] == "list"


def test_claude_code_request(clients_gateway, upstream):
    """The body and headers Claude Code 2.1.197 sends (system as text blocks with cache_control, a
    mid-conversation system message, metadata, adaptive thinking, context_management, output_config,
    ?beta=true, anthropic-beta), a tool turn included."""
    body = {"model": "tools", **CLAUDE_CODE_BODY}
    headers = {**_headers(clients_gateway), **CLAUDE_CODE_HEADERS}
    got = events(clients_gateway.url + CLAUDE_CODE_PATH, body, headers)
    text = "".join(d["delta"].get("text", "") for n, d in got if n == "content_block_delta")
    assert text == CLAUDE_CODE_ANSWER and got[-1][0] == "message_stop"
    sent = upstream.requests[-1]
    assert sent["messages"][0]["content"].endswith("official CLI for Claude.")
    assert sent["messages"][1] == {"role": "user", "content": "<system-reminder>context</system-reminder>\nlist the files"}
    assert sent["messages"][2] == {"role": "system", "content": "Available agent types for the Agent tool: ..."}
    assert sent["messages"][3]["tool_calls"][0]["function"] == {"name": "Bash", "arguments": '{"command":"ls"}'}
    assert sent["messages"][4] == {"role": "tool", "tool_call_id": "toolu_01", "content": "README.md"}
    assert not {"thinking", "context_management", "output_config", "metadata"} & set(sent)
    assert sent["user"] == body["metadata"]["user_id"]
    r = httpx.post(clients_gateway.url + "/v1/messages/count_tokens?beta=true", headers=headers,
                   json={k: body[k] for k in ("model", "system", "messages", "tools")})
    assert r.status_code == 200 and r.json()["input_tokens"] > 10


def test_usage_recorded_under_the_messages_route(clients_gateway):
    r = httpx.post(clients_gateway.url + "/v1/messages", headers=_headers(clients_gateway), json={
        "model": "echo", "max_tokens": 5, "messages": [{"role": "user", "content": "count me"}]})
    assert r.status_code == 200
    request_id = r.headers["x-request-id"]
    deadline = time.monotonic() + 5
    rows: list = []
    while time.monotonic() < deadline and not rows:
        rows = httpx.get(clients_gateway.url + "/spend/logs", params={"request_id": request_id, "size": 10},
                         headers={"Authorization": f"Bearer {clients_gateway.master_key}"}).json()["data"]
        time.sleep(0.2)
    assert len(rows) == 1 and rows[0]["route"] == "/v1/messages" and rows[0]["model"] == "echo"
    assert (rows[0]["prompt_tokens"], rows[0]["completion_tokens"], rows[0]["status"]) == (7, 3, 200)
