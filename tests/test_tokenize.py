"""/v1/tokenize, /v1/detokenize, /v1/fim/completions and embeddings `dimensions` on remote backends,
behind a real Keystile server: relayed to an OpenAI-compatible server's /tokenize (vLLM's, the fake
upstream), tiktoken for OpenAI models (from litellm's bundled encodings: the gateway runs with
tiktoken's cache disabled and no way out to the network), and clear errors for everything else.
The local model's side is test_tokenize_local.py."""

from __future__ import annotations

import json
import os
import time

import httpx
import openai
import pytest

from .conftest import model_entry
from .servers import Keystile


@pytest.fixture(scope="module")
def gw(tmp_path_factory, upstream):
    config = {"model_list": [
        model_entry(upstream, "echo", "echo-upstream"),
        model_entry(upstream, "failing", "fail"),
        model_entry(upstream, "llamacpp-server", "echo-llamacpp"),
        model_entry(upstream, "hanging", "hang", timeout=1),
        model_entry(upstream, "gpt-on-upstream", "gpt-4o"),  # its server has no /tokenize: tiktoken
        model_entry(upstream, "notok", "mystery-model"),  # no /tokenize and no known tokenizer
        {"model_name": "codestral", "litellm_params": {"model": "mistral/codestral-latest", "api_base": upstream.base_url,
                                                        "api_key": "mistral-secret"}},
        {"model_name": "codestral-failing", "litellm_params": {"model": "mistral/fail", "api_base": upstream.base_url,
                                                                "api_key": "mistral-secret"}},
        {"model_name": "gpt4o", "litellm_params": {"model": "openai/gpt-4o", "api_key": "sk-unused"}},
        {"model_name": "proxied", "litellm_params": {"model": "litellm_proxy/embedder", "api_base": upstream.base_url,
                                                      "api_key": "upstream-secret"}},
    ], "keystile_settings": {"max_request_bytes": 65536}}
    # Nothing may be downloaded: tiktoken's cache is off and every proxy leads nowhere.
    env = {"TIKTOKEN_CACHE_DIR": "", "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
           "NO_PROXY": "127.0.0.1,localhost"}
    with Keystile(tmp_path_factory.mktemp("tok"), config, env=env) as server:
        yield server


def post(gw, path: str, body: dict | bytes, timeout: float = 30) -> httpx.Response:
    headers = {"Authorization": f"Bearer {gw.master_key}"}
    if isinstance(body, bytes):
        return httpx.post(gw.url + path, headers=headers, content=body, timeout=timeout)
    return httpx.post(gw.url + path, headers=headers, json=body, timeout=timeout)


def test_relayed_to_the_upstreams_tokenize(gw, upstream):
    r = post(gw, "/v1/tokenize", {"model": "echo", "text": "hé"})
    assert r.status_code == 200, r.text
    assert r.json() == {"model": "echo", "tokens": [104, 195, 169], "token_strings": ["h", "\ufffd", "\ufffd"],
                        "token_count": 3, "count": 3, "max_model_len": 4096}
    sent = upstream.requests[-1]
    assert sent["model"] == "echo-upstream" and sent["prompt"] == "hé" and sent["return_token_strs"] is True
    r = post(gw, "/v1/tokenize", {"model": "echo", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200 and r.json()["token_count"] == len("<user>hi<assistant>")
    assert upstream.requests[-1]["messages"] == [{"role": "user", "content": "hi"}]
    r = post(gw, "/v1/detokenize", {"model": "echo", "tokens": [104, 105]})
    assert r.status_code == 200 and r.json()["text"] == "hi" == r.json()["prompt"]


def test_llamacpp_servers_tokenizer(gw):
    r = post(gw, "/v1/tokenize", {"model": "llamacpp-server", "text": "ab"})
    assert r.status_code == 200, r.text
    assert r.json()["tokens"] == [97, 98] and r.json()["token_strings"] == ["a", "b"]
    r = post(gw, "/v1/detokenize", {"model": "llamacpp-server", "tokens": [97, 98]})
    assert r.status_code == 200 and r.json()["text"] == "ab"


def test_vllm_clients_find_it_where_vllm_serves_it(gw):
    """vLLM's own route and field names, at the root: `prompt` in, `count`/`tokens` and `prompt` out."""
    r = post(gw, "/tokenize", {"model": "echo", "prompt": "ab", "add_special_tokens": False})
    assert r.status_code == 200 and r.json()["count"] == 2 and r.json()["tokens"] == [97, 98]
    r = post(gw, "/detokenize", {"model": "echo", "tokens": [97, 98]})
    assert r.status_code == 200 and r.json()["prompt"] == "ab"


def _tiktoken(name: str, monkeypatch):
    """The reference: tiktoken itself, reading litellm's bundled files through its own cache lookup."""
    import importlib.util

    import tiktoken
    spec = importlib.util.find_spec("litellm")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", os.path.join(spec.submodule_search_locations[0],
                                                          "litellm_core_utils", "tokenizers"))
    return tiktoken.get_encoding(name)


@pytest.mark.parametrize("model", ["gpt4o", "gpt-on-upstream"])
def test_openai_models_use_tiktoken_offline(gw, model, monkeypatch):
    text = "Hello, world! 你好，世界！<|endoftext|>"
    r = post(gw, "/v1/tokenize", {"model": model, "text": text})
    assert r.status_code == 200, r.text
    expected = _tiktoken("o200k_base", monkeypatch).encode(text, allowed_special="all")
    assert r.json()["tokens"] == expected and r.json()["token_count"] == len(expected)
    assert r.json()["token_strings"][:3] == ["Hello", ",", " world"]
    back = post(gw, "/v1/detokenize", {"model": model, "tokens": expected})
    assert back.status_code == 200 and back.json()["text"] == text
    r = post(gw, "/v1/detokenize", {"model": model, "tokens": [10**8]})
    assert r.status_code == 400 and "vocabulary" in r.json()["error"]["message"]
    r = post(gw, "/v1/tokenize", {"model": model, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported"


def test_backends_without_a_tokenizer_are_a_clear_400(gw):
    for model in ("notok", "proxied"):
        r = post(gw, "/v1/tokenize", {"model": model, "text": "hi"})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "unsupported" and "tokenize" in r.json()["error"]["message"]
        r = post(gw, "/v1/detokenize", {"model": model, "tokens": [1]})
        assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported"


def test_failing_hanging_and_oversized(gw):
    r = post(gw, "/v1/tokenize", {"model": "failing", "text": "hi"})
    assert r.status_code == 502 and r.json()["error"]["message"] == "tokenizer exploded"
    r = post(gw, "/v1/detokenize", {"model": "hanging", "tokens": [1]})
    assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
    r = post(gw, "/v1/tokenize", {"model": "echo", "text": "x" * 70000})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    r = post(gw, "/v1/fim/completions", {"model": "echo", "prompt": "x" * 70000})
    assert r.status_code == 413
    r = post(gw, "/v1/tokenize", b"[1, 2]")
    assert r.status_code == 400 and "JSON object" in r.json()["error"]["message"]


def test_suffix_is_relayed_as_it_is(gw, upstream):
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.master_key, max_retries=0)
    client.completions.create(model="echo", prompt="def f(", suffix=")\n", max_tokens=5)
    assert upstream.requests[-1]["suffix"] == ")\n" and upstream.requests[-1]["prompt"] == "def f("


def test_fim_completions_on_an_upstream(gw, upstream):
    body = {"model": "echo", "prompt": "def f(", "suffix": ")", "max_tokens": 5, "random_seed": 7, "min_tokens": 1}
    r = post(gw, "/v1/fim/completions", body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["object"] == "chat.completion" and answer["choices"][0]["message"]["content"] == "echo: def f("
    assert answer["usage"]["prompt_tokens"] == 7 and answer["model"] == "echo"
    sent = upstream.requests[-1]
    assert sent["suffix"] == ")" and sent["seed"] == 7 and sent["max_tokens"] == 5 and "min_tokens" not in sent
    with httpx.stream("POST", gw.url + "/v1/fim/completions", json={**body, "stream": True}, timeout=30,
                      headers={"x-api-key": gw.master_key}) as r:
        assert r.status_code == 200
        data = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(c["choices"] for c in chunks)  # no usage-only chunk: Continue reads choices[0] of each
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == "echo: def f("


def test_fim_is_relayed_to_mistral(gw, upstream):
    """A `mistral/…` deployment (Codestral) serves the route itself: body, answer and chunks as they are."""
    body = {"model": "codestral", "prompt": "def f(", "suffix": ")", "max_tokens": 5, "min_tokens": 1}
    r = post(gw, "/v1/fim/completions", body)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "fim: def f(|)" and r.json()["model"] == "codestral"
    assert upstream.requests[-1] == {**body, "model": "codestral-latest"}
    assert upstream.headers[-1]["authorization"] == "Bearer mistral-secret"
    with httpx.stream("POST", gw.url + "/v1/fim/completions", json={**body, "stream": True}, timeout=30,
                      headers={"Authorization": f"Bearer {gw.master_key}"}) as r:
        data = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]" and "stream_options" not in upstream.requests[-1]
    chunks = [json.loads(d) for d in data[:-1]]
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == "fim: def f(|)"
    assert chunks[-1]["usage"]["completion_tokens"] == 2
    r = post(gw, "/v1/fim/completions", {**body, "model": "codestral-failing"})
    assert r.status_code == 502 and r.json()["error"]["type"] == "upstream_error"
    r = post(gw, "/v1/fim/completions", {"model": "codestral", "prompt": 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"


def test_bad_fim_requests(gw):
    for body, param in (({"model": "echo"}, "prompt"), ({"model": "echo", "prompt": 3}, "prompt"),
                        ({"model": "echo", "prompt": "a", "suffix": ["b"]}, "suffix"),
                        ({"model": "echo", "prompt": "a", "max_tokens": 0}, "max_tokens"),
                        ({"prompt": "a"}, "model")):
        r = post(gw, "/v1/fim/completions", body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (body, r.text)
    r = post(gw, "/v1/fim/completions", {"model": "nope", "prompt": "a"})
    assert r.status_code == 404
    r = post(gw, "/v1/fim/completions", {"model": "failing", "prompt": "a", "stream": True})
    assert r.status_code == 502 and r.json()["error"]["message"] == "upstream exploded"
    r = post(gw, "/v1/fim/completions", {"model": "hanging", "prompt": "a"})
    assert r.status_code == 504


def test_embedding_dimensions(gw, upstream):
    """Relayed to an OpenAI-compatible server and through litellm; where the provider dropped it
    (litellm's drop_params) and answered another size, a clear 400 instead of the wrong vectors."""
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.master_key, max_retries=0)
    client.embeddings.create(model="echo", input="hi", dimensions=3)
    assert upstream.requests[-1]["dimensions"] == 3
    done = client.embeddings.create(model="proxied", input="hi", dimensions=3)
    assert len(done.data[0].embedding) == 3 and upstream.requests[-1]["dimensions"] == 3
    r = post(gw, "/v1/embeddings", {"model": "proxied", "input": "hi", "dimensions": 2})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported"
    assert "dimensions" in r.json()["error"]["message"]


def test_each_call_leaves_a_usage_record(gw):
    """Accounting is the core's: a tokenize call is recorded without tokens, a relayed FIM stream with the
    usage in its last chunk, a translated one with the upstream's."""
    auth = {"Authorization": f"Bearer {gw.master_key}"}
    ids = {}
    ids["tokenize"] = post(gw, "/v1/tokenize", {"model": "echo", "text": "hello"}).headers["x-request-id"]
    for model in ("codestral", "echo"):
        with httpx.stream("POST", gw.url + "/v1/fim/completions", headers=auth, timeout=30,
                          json={"model": model, "prompt": "a", "suffix": "b", "stream": True}) as r:
            r.read()
            ids[model] = r.headers["x-request-id"]
    rows: dict = {}
    for _ in range(50):
        rows = {row["request_id"]: row for row in httpx.get(gw.url + "/spend/logs", headers=auth,
                                                             params={"size": 100}).json()["data"]}
        if set(ids.values()) <= set(rows):
            break
        time.sleep(0.2)
    tok, relayed, translated = rows[ids["tokenize"]], rows[ids["codestral"]], rows[ids["echo"]]
    assert tok["route"] == "/v1/tokenize" and tok["status"] == 200 and tok["total_tokens"] == 0
    assert (relayed["prompt_tokens"], relayed["completion_tokens"]) == (5, 2) and relayed["model"] == "codestral"
    assert translated["route"] == "/v1/fim/completions" and translated["prompt_tokens"] == 7


async def test_deployments_share_one_encoding():
    """Each deployment has its own OpenAITokenizers; the ~75 MiB encoding behind them is built once."""
    from backends.openai_tokenizer import OpenAITokenizers

    first, second = OpenAITokenizers(), OpenAITokenizers()
    assert await first.encoding("gpt-4o") is await second.encoding("gpt-4o-mini")
    assert await first.encoding("gpt-4o") is not await first.encoding("gpt-4")  # o200k_base, cl100k_base
