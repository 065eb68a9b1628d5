"""Bad input and failing upstreams: every failure is the error envelope with the right status,
and nothing hangs."""

from __future__ import annotations

import httpx
import openai
import pytest


def post(relay, path, content=None, json=None, key=True, **headers):
    h = {"Authorization": f"Bearer {relay.master_key}"} if key else {}
    h.update(headers)
    return httpx.post(relay.url + path, content=content, json=json, headers=h, timeout=15)


def envelope(r: httpx.Response) -> dict:
    assert r.headers["content-type"].startswith("application/json"), r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


def test_malformed_json(relay):
    r = post(relay, "/v1/chat/completions", content=b'{"model": "echo", "messages": [', **{"Content-Type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in envelope(r)["message"]


def test_body_must_be_object(relay):
    r = post(relay, "/v1/chat/completions", json=[1, 2])
    assert r.status_code == 400 and "JSON object" in envelope(r)["message"]


@pytest.mark.parametrize("body, param", [
    ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "echo"}, "messages"),
    ({"model": "echo", "messages": []}, "messages"),
    ({"model": 5, "messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "echo", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
    ({"model": "echo", "messages": [{"role": "user", "content": "x"}], "temperature": 3}, "temperature"),
    ({"model": "echo", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
    ({"model": "echo", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
    ({"model": "echo", "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
])
def test_bad_fields_name_the_field(relay, body, param):
    r = post(relay, "/v1/chat/completions", json=body)
    err = envelope(r)
    assert r.status_code == 400 and err["param"] == param and param in err["message"]


def test_completions_and_embeddings_validate(relay):
    assert post(relay, "/v1/completions", json={"model": "echo"}).status_code == 400
    r = post(relay, "/v1/embeddings", json={"model": "echo", "input": 5})
    assert r.status_code == 400 and envelope(r)["param"].startswith("input")


def test_unknown_model_is_404_and_lists_nothing(relay):
    r = post(relay, "/v1/chat/completions", json={"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]})
    err = envelope(r)
    assert r.status_code == 404 and err["code"] == "model_not_found" and "echo" not in err["message"]


def test_oversized_body_is_413(relay):
    big = {"model": "echo", "messages": [{"role": "user", "content": "x" * 70000}]}
    r = post(relay, "/v1/chat/completions", json=big)
    assert r.status_code == 413 and envelope(r)["code"] == "request_too_large"


def test_oversized_chunked_body_is_413(relay):
    def gen():
        yield b'{"model": "echo", "messages": [{"role": "user", "content": "'
        for _ in range(20):
            yield b"y" * 8192
        yield b'"}]}'
    r = post(relay, "/v1/chat/completions", content=gen(), **{"Content-Type": "application/json"})
    assert r.status_code == 413


def test_missing_and_wrong_key(relay):
    body = {"model": "echo", "messages": [{"role": "user", "content": "x"}]}
    r = post(relay, "/v1/chat/completions", json=body, key=False)
    assert r.status_code == 401 and envelope(r)["type"] == "authentication_error"
    r = post(relay, "/v1/chat/completions", json=body, key=False, Authorization="Bearer sk-wrong")
    assert r.status_code == 401
    # SDK-compatible headers carry the key too.
    assert post(relay, "/v1/chat/completions", json=body, key=False, **{"api-key": relay.master_key}).status_code == 200
    assert post(relay, "/v1/chat/completions", json=body, key=False, **{"x-api-key": relay.master_key}).status_code == 200


def test_unknown_route_is_json_404(relay):
    r = httpx.get(relay.url + "/v1/nothing-here")
    assert r.status_code == 404 and envelope(r)


@pytest.fixture
def client(relay):
    return openai.OpenAI(base_url=relay.url + "/v1", api_key=relay.master_key, max_retries=0, timeout=15)


def test_upstream_500_is_502_with_message(client):
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="failing", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 502 and "upstream exploded" in e.value.message


def test_upstream_400_keeps_status_message_and_param(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="badreq", messages=[{"role": "user", "content": "x"}])
    assert "max_tokens is too large" in e.value.message and e.value.body["param"] == "max_tokens"


def test_upstream_hang_is_504(client):
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="hanging", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 504


def test_stream_from_hanging_upstream_is_504(client):
    with pytest.raises(openai.APIStatusError) as e:
        list(client.chat.completions.create(model="hanging", messages=[{"role": "user", "content": "x"}], stream=True))
    assert e.value.status_code == 504


def test_upstream_drop_mid_stream_is_error_event(client):
    received = []
    with pytest.raises(openai.APIError) as e:
        for chunk in client.chat.completions.create(model="dropping",
                                                    messages=[{"role": "user", "content": "one two three four"}],
                                                    stream=True):
            received.append(chunk)
    assert len(received) == 2
    assert "dropped" in str(e.value)


def test_fallback_model_answers_when_primary_fails(client):
    r = client.chat.completions.create(model="with-fallback", messages=[{"role": "user", "content": "fb"}])
    assert r.choices[0].message.content == "echo: fb" and r.model == "echo"
