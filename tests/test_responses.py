"""The Responses API (/v1/responses) translated onto chat, driven by the real `openai` SDK
(responses.create, responses.stream) and by the request Codex CLI sends, against a live Keystile in
front of the fake upstream (tests/upstream.py). The local model's turn is in test_clients_local.py."""

from __future__ import annotations

import httpx
import openai
import pytest

from .captured import CODEX_ANSWER, CODEX_BODY, CODEX_HEADERS, CODEX_PATCH
from .sse import events

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a place", "strict": False,
           "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}


@pytest.fixture
def client(clients_gateway):
    return openai.OpenAI(base_url=clients_gateway.url + "/v1", api_key=clients_gateway.master_key, max_retries=0)


def _auth(gw) -> dict:
    return {"Authorization": f"Bearer {gw.master_key}"}


def test_create_with_instructions(client, upstream):
    r = client.responses.create(model="echo", instructions="Be brief.", input="hello there", max_output_tokens=20,
                                temperature=0.3)
    assert r.object == "response" and r.status == "completed" and r.id.startswith("resp_") and r.model == "echo"
    assert r.output_text == "echo: hello there" and r.output[0].type == "message"
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (7, 3, 10)
    sent = upstream.requests[-1]
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}]
    assert sent["max_tokens"] == 20 and sent["temperature"] == 0.3


def test_function_and_custom_tools(client, upstream):
    r = client.responses.create(model="tools", input=[{"role": "user", "content": "Paris?"}], tools=[WEATHER, CODEX_PATCH],
                                tool_choice="auto", parallel_tool_calls=False)
    assert [o.type for o in r.output] == ["message", "function_call"]
    call = r.output[1]
    assert (call.call_id, call.name, call.arguments, call.status) == \
        ("call_abc123", "get_weather", '{"q":"Paris?"}', "completed")
    sent = upstream.requests[-1]
    assert sent["tools"][0] == {"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a place", "parameters": WEATHER["parameters"], "strict": False}}
    assert sent["tools"][1]["function"]["parameters"]["required"] == ["input"]
    assert "start: /.+/" in sent["tools"][1]["function"]["description"]
    assert sent["tool_choice"] == "auto" and sent["parallel_tool_calls"] is False
    # A custom tool offered first is called as one: its `input` comes back as the item's string.
    r = client.responses.create(model="toolsilent", input="fix it", tools=[CODEX_PATCH])
    assert [o.type for o in r.output] == ["custom_tool_call"]
    assert r.output[0].name == "apply_patch" and r.output[0].input == '{"q":"fix it"}'


def test_function_call_output_round_trip(client, upstream):
    r = client.responses.create(model="tools", tools=[WEATHER], input=[
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Use tools."}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Paris?"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAA"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"q":"Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny, 21C"}])
    assert r.output_text == "the tool said: sunny, 21C"
    assert upstream.requests[-1]["messages"] == [
        {"role": "system", "content": "Use tools."}, {"role": "user", "content": "Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"q":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21C"}]


def test_stream_sequence(clients_gateway):
    got = events(clients_gateway.url + "/v1/responses", {
        "model": "tools", "input": "Paris?", "tools": [WEATHER], "stream": True}, _auth(clients_gateway))
    names = [n for n, _ in got]
    assert names == (["response.created", "response.in_progress", "response.output_item.added",
                      "response.content_part.added"] + ["response.output_text.delta"] * 5 +
                     ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                      "response.output_item.added", "response.function_call_arguments.delta",
                      "response.function_call_arguments.delta", "response.function_call_arguments.done",
                      "response.output_item.done", "response.completed"])
    assert [d["sequence_number"] for _, d in got] == list(range(len(got)))
    message_id = got[2][1]["item"]["id"]
    assert all(d["item_id"] == message_id and d["output_index"] == 0 for n, d in got[3:11])
    call_events = got[12:17]
    assert {d["output_index"] for _, d in call_events} == {1}
    assert got[15][1]["arguments"] == '{"q":"Paris?"}'
    final = got[-1][1]["response"]
    assert final["status"] == "completed" and [o["type"] for o in final["output"]] == ["message", "function_call"]
    assert final["output"][0]["content"][0]["text"] == "Let me look that up."
    assert final["usage"] == {"input_tokens": 7, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 8,
                              "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 15}


def test_sdk_stream_helper(client):
    with client.responses.stream(model="tools", input="Paris?", tools=[WEATHER]) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == "Let me look that up." and final.output_text == text
    assert final.output[1].type == "function_call" and final.output[1].arguments == '{"q":"Paris?"}'
    with client.responses.stream(model="toolsilent", input="fix it", tools=[CODEX_PATCH]) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert "response.custom_tool_call_input.done" in kinds
    assert final.output[0].type == "custom_tool_call" and final.output[0].input == '{"q":"fix it"}'


def test_stream_failure_is_response_failed(clients_gateway):
    got = events(clients_gateway.url + "/v1/responses", {"model": "dropping", "input": "one two three four",
                                                          "stream": True}, _auth(clients_gateway))
    assert got[-1][0] == "response.failed" and got[-1][1]["response"]["status"] == "failed"
    assert got[-1][1]["response"]["error"]["message"]
    assert [d["sequence_number"] for _, d in got] == list(range(len(got)))


def test_stateful_requests_are_refused(clients_gateway, client):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="echo", input="x", previous_response_id="resp_123")
    assert e.value.code == "store_unsupported" and "store: false" in e.value.message
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="echo", input="x", store=True)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_123")
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="echo", input=[{"type": "item_reference", "id": "msg_1"}])
    assert e.value.param == "input.0.type"


def test_websocket_upgrade_refused_at_once(clients_gateway):
    r = httpx.get(clients_gateway.url + "/v1/responses", timeout=5, headers={
        **_auth(clients_gateway), "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "OpenAI-Beta": "responses_websockets=2026-02-04"})
    assert r.status_code == 426 and r.json()["error"]["code"] == "websocket_unsupported"


def test_codex_cli_request(clients_gateway, upstream):
    """The body Codex CLI sends (wire_api = "responses"): stateless, streaming, instructions, a
    developer message, function and custom tools, reasoning, include, prompt_cache_key, text."""
    body = {"model": "tools", **CODEX_BODY}
    got = events(clients_gateway.url + "/v1/responses", body, {**_auth(clients_gateway), **CODEX_HEADERS})
    assert got[-1][0] == "response.completed"
    assert "".join(d["delta"] for n, d in got if n == "response.output_text.delta") == CODEX_ANSWER
    sent = upstream.requests[-1]
    assert [m["role"] for m in sent["messages"]] == ["system", "system", "user", "user", "assistant", "tool",
                                                     "assistant", "tool"]
    assert sent["messages"][6]["tool_calls"][0]["function"] == {"name": "apply_patch",
                                                                "arguments": '{"input":"*** Begin Patch"}'}
    assert [t["function"]["name"] for t in sent["tools"]] == ["shell", "apply_patch"]  # hosted web_search dropped
    assert not {"reasoning", "include", "prompt_cache_key", "store", "text"} & set(sent)
