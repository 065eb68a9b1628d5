"""The enveloped enterprise API (seed 001_5fba30d7eb82392b.txt) against a live Keystile: the guide's
curl line and Python snippet with only the base URL and key changed, its response shapes as the
guide prints them, and bad input in the same envelope."""

from __future__ import annotations

import json
import subprocess

import httpx
import openai
import pytest

from .conftest import model_entry
from .servers import Keystile

MODEL = "meta-llama-3-8b-instruct"


@pytest.fixture(scope="module")
def server(tmp_path_factory, upstream):
    config = {"model_list": [model_entry(upstream, MODEL, "echo-upstream"), model_entry(upstream, "failing", "fail")]}
    with Keystile(tmp_path_factory.mktemp("enveloped"), config) as ks:
        yield ks


def curl(*args: str) -> tuple[int, str]:
    """Run curl as the guide does; the HTTP status and the body."""
    out = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", *args], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    body, _, status = out.rpartition("\n")
    return int(status), body


GUIDE_BODY = """{
    "messages": [
        {
            "role": "system",
            "content": ""
        },
        {
            "role": "user",
            "content": "hi"
        }
    ],
    "model": "meta-llama-3-8b-instruct",
    "stream": false,
    "maxTokens": 1024,
    "temperature": 0.5,
    "topP": 0.02
}"""


def test_guide_curl_answers_in_the_envelope(server, upstream):
    status, body = curl("--location", f"{server.url}/api/v1/ai/chat/completions",
                        "--header", "Content-Type: application/json",
                        "--header", f"Authorization: Bearer {server.master_key}",
                        "--data", GUIDE_BODY)
    assert status == 200
    answer = json.loads(body)
    assert list(answer) == ["code", "msg", "data"]
    assert answer["code"] == 200 and answer["msg"] == "Operation successful"
    data = answer["data"]
    assert data["object"] == "chat.completion" and data["model"] == MODEL
    assert data["choices"][0]["message"] == {"role": "assistant", "content": "echo: hi"}
    assert data["choices"][0]["finish_reason"] == "stop"
    assert data["usage"] == {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
    sent = upstream.requests[-1]  # camelCase reached the model as OpenAI's fields
    assert sent["max_tokens"] == 1024 and sent["top_p"] == 0.02 and sent["temperature"] == 0.5
    assert "maxTokens" not in sent and "topP" not in sent


def test_snake_case_works_too(server, upstream):
    r = httpx.post(f"{server.url}/api/v1/ai/chat/completions", headers={"Authorization": f"Bearer {server.master_key}"},
                   json={"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 5, "top_p": 0.5})
    assert r.status_code == 200 and r.json()["data"]["choices"][0]["message"]["content"] == "echo: x"
    assert upstream.requests[-1]["max_tokens"] == 5 and upstream.requests[-1]["top_p"] == 0.5


def test_stream_is_event_messages_with_usage_in_every_chunk(server):
    body = json.loads(GUIDE_BODY) | {"stream": True, "messages": [{"role": "user", "content": "a b c"}]}
    status, text = curl("--location", f"{server.url}/api/v1/ai/chat/completions", "--no-buffer",
                        "--header", "Content-Type: application/json",
                        "--header", f"Authorization: Bearer {server.master_key}", "--data", json.dumps(body))
    assert status == 200
    events = [e for e in text.split("\n\n") if e.strip()]
    assert events, text
    content = ""
    for event in events:
        name, data = event.split("\n")
        assert name == "event:messages" and data.startswith("data:{")  # as the guide prints them
        chunk = json.loads(data[len("data:"):])
        assert chunk["object"] == "chat.completion.chunk" and chunk["model"] == MODEL
        assert set(chunk["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
        content += "".join(c["delta"].get("content") or "" for c in chunk["choices"])
    assert content == "echo: a b c"
    last = json.loads(events[-1].split("\n")[1][len("data:"):])
    assert last["usage"] == {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}  # the model's count


def test_guide_python_snippet_streams_with_the_openai_sdk(server, capsys):
    API_KEY = server.master_key
    client = openai.OpenAI(
        base_url=f"{server.url}/api/v1/ai",
        api_key=API_KEY
    )

    completion = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "user", "content": "say hello"},
        ],
        max_tokens=128,
        stream=True,
    )

    for chunk in completion:
        if not chunk.choices:
            continue
        content = chunk.choices[0].delta.content
        if content:
            print(content, end="")
    assert capsys.readouterr().out == "echo: say hello"


def test_openai_sdk_without_streaming_gets_a_chat_completion(server):
    # The guide's Node.js example, in Python: `completion.choices` must be there.
    client = openai.OpenAI(base_url=f"{server.url}/api/v1/ai", api_key=server.master_key, max_retries=0)
    completion = client.chat.completions.create(messages=[{"role": "user", "content": "say hello"}], model=MODEL)
    assert completion.choices[0].message.content == "echo: say hello"
    assert completion.usage.total_tokens == 10


@pytest.mark.parametrize("body, status, needle", [
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "maxTokens": 0}, 400, "maxTokens:"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, 400, "max_tokens:"),
    ({"model": MODEL, "messages": []}, 400, "messages"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "maxTokens": 5, "max_tokens": 5}, 400, "twice"),
    ({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}, 404, "no-such-model"),
    ({"model": "failing", "messages": [{"role": "user", "content": "x"}]}, 502, "upstream"),
])
def test_errors_come_in_the_envelope_with_their_status(server, body, status, needle):
    r = httpx.post(f"{server.url}/api/v1/ai/chat/completions", headers={"Authorization": f"Bearer {server.master_key}"},
                   json=body, timeout=20)
    assert r.status_code == status
    answer = r.json()
    assert answer["code"] == status and answer["data"] is None and needle in answer["msg"]


def test_a_bad_key_is_refused_in_the_envelope(server):
    status, body = curl(f"{server.url}/api/v1/ai/chat/completions", "--header", "Authorization: Bearer sk-wrong",
                        "--header", "Content-Type: application/json", "--data", GUIDE_BODY)
    assert status == 401 and json.loads(body)["code"] == 401
