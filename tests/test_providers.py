"""A provider that is not OpenAI-compatible, through the litellm SDK: a small real server speaking
Anthropic's Messages API stands in for the paid provider."""

from __future__ import annotations

import json
import threading
import time

import openai
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from .servers import Keystile
from .upstream import free_port


def _events(model: str):
    yield "message_start", {"type": "message_start", "message": {
        "id": "m1", "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": None,
        "usage": {"input_tokens": 5, "output_tokens": 0}}}
    yield "content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    for piece in ("hello", " from", " claude"):
        yield "content_block_delta", {"type": "content_block_delta", "index": 0,
                                      "delta": {"type": "text_delta", "text": piece}}
    yield "content_block_stop", {"type": "content_block_stop", "index": 0}
    yield "message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}}
    yield "message_stop", {"type": "message_stop"}


class FakeAnthropic:
    def __init__(self):
        self.port = free_port()
        self.seen: list[tuple[dict, dict]] = []
        app = Starlette(routes=[Route("/v1/messages", self.messages, methods=["POST"])])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))

    async def messages(self, request: Request):
        body = await request.json()
        self.seen.append((dict(request.headers), body))
        if body["model"] == "claude-broken":
            return JSONResponse({"type": "error", "error": {"type": "api_error", "message": "overloaded"}},
                                status_code=529)
        if body.get("stream"):
            lines = (f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in _events(body["model"]))
            return StreamingResponse(lines, media_type="text/event-stream")
        return JSONResponse({"id": "m1", "type": "message", "role": "assistant", "model": body["model"],
                             "content": [{"type": "text", "text": "hello from claude"}], "stop_reason": "end_turn",
                             "usage": {"input_tokens": 5, "output_tokens": 4}})

    def __enter__(self):
        threading.Thread(target=self.server.run, daemon=True).start()
        while not self.server.started:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    with FakeAnthropic() as fake:
        def entry(name, model):
            return {"model_name": name, "litellm_params": {"model": f"anthropic/{model}", "api_key": "anthropic-secret",
                                                          "api_base": f"http://127.0.0.1:{fake.port}"}}
        # No api_base: litellm's default (api.anthropic.com, unreachable here) is the only place its key may go.
        unset_base = {"model_name": "claude-default",
                      "litellm_params": {"model": "anthropic/claude-3-5-sonnet-20240620", "api_key": "anthropic-secret",
                                         "timeout": 5}}
        config = {"model_list": [entry("claude", "claude-3-5-sonnet-20240620"), entry("broken", "claude-broken"),
                                 unset_base],
                  "keystile_settings": {"num_retries": 0}}
        with Keystile(tmp_path_factory.mktemp("providers"), config) as server:
            yield server, fake


def test_chat_through_litellm(gateway):
    server, fake = gateway
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=server.master_key, max_retries=0)
    r = client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}], max_tokens=20)
    assert r.choices[0].message.content == "hello from claude" and r.model == "claude"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (5, 4)
    headers, body = fake.seen[-1]
    assert headers["x-api-key"] == "anthropic-secret" and body["max_tokens"] == 20
    assert body["messages"][0]["content"][0]["text"] == "hi" or body["messages"][0]["content"] == "hi"


def test_stream_through_litellm(gateway):
    server, _ = gateway
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=server.master_key, max_retries=0)
    chunks = list(client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=20, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "hello from claude"
    assert chunks[-1].usage.completion_tokens == 3 and all(c.model == "claude" for c in chunks)


def test_provider_error_is_502(gateway):
    server, _ = gateway
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=server.master_key, max_retries=0)
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="broken", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    assert e.value.status_code == 502 and "overloaded" in e.value.message


@pytest.mark.parametrize("stream", [False, True])
def test_client_cannot_redirect_the_deployments_credentials(gateway, stream):
    """litellm takes `api_base`, `base_url`, `api_key`, `extra_headers`, ... from the same keyword arguments as
    the request's fields: a client that set them would have the deployment's key sent to its own server."""
    server, fake = gateway
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=server.master_key, max_retries=0)
    before = len(fake.seen)
    stolen = {"api_base": f"http://127.0.0.1:{fake.port}", "base_url": f"http://127.0.0.1:{fake.port}",
              "extra_headers": {"x-leak": "1"}, "mock_response": "free tokens"}
    with pytest.raises(openai.APIError):
        r = client.chat.completions.create(model="claude-default", messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=5, stream=stream, extra_body=stolen)
        if stream:
            list(r)
    assert len(fake.seen) == before, "the deployment's key went to a server the client named"
    client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}], max_tokens=5,
                                   extra_body={"api_key": "client-chosen", "extra_headers": {"x-leak": "1"}})
    headers, _ = fake.seen[-1]
    assert headers["x-api-key"] == "anthropic-secret" and "x-leak" not in headers
