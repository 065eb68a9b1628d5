"""A dialect that translates, served by a real server next to OpenAI's: its own request shape,
answer, SSE event names and error envelope, around the same core (limits, routing, accounting).
The dialect is tests/toy_dialect.py, written as README's "Adding a dialect" describes."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest

from .conftest import relay_config
from .servers import Keystile


@pytest.fixture(scope="module")
def toy(tmp_path_factory, upstream):
    with Keystile(tmp_path_factory.mktemp("toy"), relay_config(upstream),
                  serve=[sys.executable, str(Path(__file__).parent / "toy_dialect.py")]) as server:
        yield server


def post(server: Keystile, path: str, body: dict, **kw) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=30,
                      headers={"Authorization": f"Bearer {server.master_key}"}, **kw)


def events(text: str) -> list[tuple[str, bytes]]:
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        out.append((lines.get("event", ""), lines["data"].encode()))
    return out


def test_a_translated_answer(toy):
    r = post(toy, "/toy/say", {"model": "echo", "prompt": "hello there"})
    assert r.status_code == 200, r.text
    assert r.json() == {"said": "echo: hello there", "tokens": [7, 3]}


def test_a_translated_stream_with_its_own_event_names(toy):
    r = post(toy, "/toy/say", {"model": "echo", "prompt": "hello there", "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    got = events(r.text)
    words = [orjson.loads(data)["text"] for name, data in got if name == "word"]
    assert "".join(words).replace(" ", "") == "echo:hellothere"
    assert got[-2:] == [("tokens", b"[7,3]"), ("end", b"{}")]


def test_errors_in_the_dialects_own_envelope(toy):
    missing = post(toy, "/toy/say", {"model": "no-such-model", "prompt": "hi"})
    assert missing.status_code == 404
    assert missing.json()["oops"]["kind"] == "invalid_request_error"
    assert "no-such-model" in missing.json()["oops"]["why"]
    invalid = post(toy, "/toy/say", {"model": "echo", "prompt": ""})
    assert invalid.status_code == 400 and "prompt" in invalid.json()["oops"]["why"]
    unauthenticated = httpx.post(toy.url + "/toy/say", json={"model": "echo", "prompt": "hi"})
    assert unauthenticated.status_code == 401 and unauthenticated.json()["oops"]["kind"] == "authentication_error"
    failing = post(toy, "/toy/say", {"model": "failing", "prompt": "hi"})
    assert failing.status_code == 502 and failing.json()["oops"]["kind"] == "upstream_error"
    wrong_method = httpx.get(toy.url + "/toy/say")
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert wrong_method.json()["oops"]["kind"] == "invalid_request_error"
    openai_wrong_method = httpx.get(toy.url + "/openai/v1/chat/completions")
    assert openai_wrong_method.status_code == 405
    assert openai_wrong_method.json()["error"]["code"] == "method_not_allowed"


def test_a_stream_failing_midway_ends_with_the_dialects_error_event(toy):
    r = post(toy, "/toy/say", {"model": "dropping", "prompt": "one two three four", "stream": True})
    got = events(r.text)  # the upstream drops the connection after two chunks
    assert r.status_code == 200 and got[0][0] == "word" and got[-1][0] == "oops"
    assert orjson.loads(got[-1][1])["oops"]["kind"] == "upstream_error"


def test_openai_routes_and_accounting_are_the_same_core(toy):
    openai = post(toy, "/v1/chat/completions", {"model": "echo", "messages": [{"role": "user", "content": "x"}]})
    assert openai.status_code == 200 and openai.json()["choices"][0]["message"]["content"] == "echo: x"
    deadline, routes = time.monotonic() + 10, set()
    while not {"/toy/say", "/v1/chat/completions"} <= routes:  # records are written in batches
        assert time.monotonic() < deadline, routes
        time.sleep(0.2)
        logs = httpx.get(toy.url + "/spend/logs", params={"model": "echo", "size": 100}, timeout=30,
                         headers={"Authorization": f"Bearer {toy.master_key}"})
        routes = {row["route"] for row in logs.json()["data"]}
    assert "/toy/say" in httpx.get(toy.url + "/openapi.json").json()["paths"]
