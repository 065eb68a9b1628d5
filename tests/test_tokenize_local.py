"""The model's own tokenizer, fill-in-the-middle and embeddings on the real SmolLM2 (llama.cpp),
behind a real Keystile server: /v1/tokenize and /v1/detokenize (text, a chat rendered by the
model's chat template, the 004 guide's body without `model`), `suffix` and /v1/fim/completions
with the model's FIM tokens, and the OpenAI Node SDK's base64 embeddings.

SmolLM2's GGUF has no FIM tokens (its vocabulary puts <|im_start|> and <repo_name> where
StarCoder's had <fim_prefix>…), so `suffix` is a clear 400 on it; `smollm2-fim` is the same file
given FIM token ids through `kv_overrides` (as a deployment of a GGUF lacking the metadata would),
which drives the FIM path on real llama.cpp."""

from __future__ import annotations

import json
import subprocess

import httpx
import openai
import pytest

from .servers import Keystile
from .stack import ROOT, require_tool
from .test_local_model import MODEL

FIM_IDS = {"tokenizer.ggml.fim_pre_token_id": 3, "tokenizer.ggml.fim_suf_token_id": 4,
           "tokenizer.ggml.fim_mid_token_id": 6}


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    params = {"model": f"llamacpp/{MODEL}", "n_ctx": 1024, "n_threads": 1, "max_queue": 4, "timeout": 120}
    config = {"model_list": [{"model_name": "smollm2", "litellm_params": params},
                             {"model_name": "smollm2-fim", "litellm_params": {**params, "kv_overrides": FIM_IDS}}]}
    with Keystile(tmp_path_factory.mktemp("tok-local"), config, wait_ready=True) as server:
        yield server


def post(gw, path: str, body: dict | bytes, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {gw.master_key}", **kw.pop("headers", {})}
    if isinstance(body, bytes):
        return httpx.post(gw.url + path, headers=headers, content=body, timeout=120, **kw)
    return httpx.post(gw.url + path, headers=headers, json=body, timeout=120, **kw)


def test_tokenize_text_and_back(gw):
    r = post(gw, "/v1/tokenize", {"model": "smollm2", "text": "Hello, world! <|im_start|>"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_count"] == len(body["tokens"]) == len(body["token_strings"]) == body["count"]
    assert body["token_strings"][:2] == ["Hello", ","] and body["token_strings"][-1] == "<|im_start|>"
    assert body["tokens"][-1] == 1  # a special token is one token, as a chat template's are
    assert body["max_model_len"] == 1024
    back = post(gw, "/v1/detokenize", {"model": "smollm2", "tokens": body["tokens"]})
    assert back.status_code == 200 and back.json()["text"] == "Hello, world! <|im_start|>"


def test_the_004_guides_body_without_a_model(gw):
    """The guide's curl, with only the base URL and key changed: the default (first) model answers."""
    r = post(gw, "/v1/tokenize", {"text": "Hello, world! 你好，世界！"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) >= {"tokens", "token_strings", "token_count"} and body["model"] == "smollm2"
    assert "".join(body["token_strings"]).startswith("Hello, world!")


def test_messages_are_rendered_with_the_chat_template(gw):
    """The tokens are the prompt a chat completion evaluates: its usage says as many prompt tokens."""
    ask = [{"role": "user", "content": "Say hello."}]
    r = post(gw, "/v1/tokenize", {"model": "smollm2", "messages": ask})
    assert r.status_code == 200, r.text
    strings = r.json()["token_strings"]
    assert strings[0] == "<|im_start|>" and "SmolLM" in "".join(strings)  # the template's default system
    assert "".join(strings).endswith("<|im_start|>assistant\n")  # and its generation prompt
    chat = post(gw, "/v1/chat/completions", {"model": "smollm2", "messages": ask, "max_tokens": 1})
    assert chat.json()["usage"]["prompt_tokens"] == r.json()["token_count"]


def test_bad_tokenizer_requests(gw):
    cases = [
        (b'{"model": "smollm2", "text": ', 400, "invalid_json"),
        ({"model": "smollm2"}, 400, None),  # neither text nor messages
        ({"model": "smollm2", "text": "a", "messages": [{"role": "user", "content": "b"}]}, 400, None),
        ({"model": "smollm2", "text": 5}, 400, None),
        ({"model": "nope", "text": "a"}, 404, "model_not_found"),
        ({"model": "smollm2", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}, 400, "unsupported"),
        ({"model": "smollm2", "messages": [{"role": "user"}], "tools": [{"type": "function"}]}, None, None),
    ]
    for body, status, code in cases:
        r = post(gw, "/v1/tokenize", body)
        assert r.status_code == status if status else r.status_code < 500, (body, r.text)
        if status:
            assert r.json()["error"]["message"] and (code is None or r.json()["error"]["code"] == code)
    r = post(gw, "/v1/detokenize", {"model": "smollm2", "tokens": [1, 10**9]})
    assert r.status_code == 400 and "vocabulary" in r.json()["error"]["message"]
    r = post(gw, "/v1/detokenize", {"model": "smollm2", "tokens": ["a"]})
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("tokens")
    r = post(gw, "/v1/detokenize", {"model": "smollm2", "tokens": [-1]})
    assert r.status_code == 400


def test_suffix_without_fim_tokens_is_a_clear_400(gw):
    for path, body in (("/v1/completions", {"model": "smollm2", "prompt": "def f(", "suffix": ")\n", "max_tokens": 4}),
                       ("/v1/fim/completions", {"model": "smollm2", "prompt": "def f(", "suffix": ")\n"})):
        r = post(gw, path, body)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "unsupported" and "fill-in-the-middle" in r.json()["error"]["message"]


def _tokens(gw, text: str) -> int:
    return post(gw, "/v1/tokenize", {"model": "smollm2-fim", "text": text}).json()["token_count"]


def test_suffix_uses_the_models_fim_tokens(gw):
    """prompt = <fim_prefix> prefix <fim_suffix> suffix <fim_middle>: three tokens more than the two texts."""
    prefix, suffix = "def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n"
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.master_key, max_retries=0, timeout=120)
    done = client.completions.create(model="smollm2-fim", prompt=prefix, suffix=suffix, max_tokens=4, temperature=0)
    assert done.usage.prompt_tokens == _tokens(gw, prefix) + _tokens(gw, suffix) + 3
    assert 0 < done.usage.completion_tokens <= 4
    chunks = list(client.completions.create(model="smollm2-fim", prompt=prefix, suffix=suffix, max_tokens=4,
                                            temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == done.choices[0].text


def test_fim_completions_as_continue_sends_them(gw):
    """Continue's `mistral` provider: a streamed POST to fim/completions with both key headers; it
    reads choices[0].delta.content of every chunk."""
    body = {"model": "smollm2-fim", "prompt": "def add(a, b):\n    return ", "suffix": "\n", "max_tokens": 6,
            "temperature": 0.01, "stream": True}
    headers = {"x-api-key": gw.master_key, "Accept": "application/json"}
    with httpx.stream("POST", gw.url + "/v1/fim/completions", json=body, timeout=120,
                      headers={**headers, "Authorization": f"Bearer {gw.master_key}"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    assert chunks and all(c["object"] == "chat.completion.chunk" and "content" in c["choices"][0]["delta"]
                          for c in chunks)
    streamed = "".join(c["choices"][0]["delta"]["content"] for c in chunks)
    whole = post(gw, "/v1/fim/completions", {**body, "stream": False})
    assert whole.status_code == 200, whole.text
    answer = whole.json()
    assert answer["object"] == "chat.completion" and answer["choices"][0]["message"]["content"] == streamed
    assert answer["usage"]["completion_tokens"] > 0 and answer["model"] == "smollm2-fim"


def test_embedding_dimensions_on_a_local_model(gw):
    """Local models give their full size only: SmolLM2 is not trained to be truncated (Matryoshka)."""
    r = post(gw, "/v1/embeddings", {"model": "smollm2", "input": "hello", "dimensions": 64})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported"
    assert "576 dimensions" in r.json()["error"]["message"]
    r = post(gw, "/v1/embeddings", {"model": "smollm2", "input": "hello", "dimensions": 576})
    assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 576


NODE_EMBEDDINGS = """
import OpenAI from "openai";
const client = new OpenAI({ baseURL: process.env.BASE_URL, apiKey: process.env.KEY, maxRetries: 0 });
const input = ["def add(a, b):", "return a + b"];
const packed = await client.embeddings.create({ model: "smollm2", input });  // the SDK's default: base64
const floats = await client.embeddings.create({ model: "smollm2", input, encoding_format: "float" });
console.log(JSON.stringify({ packed: packed.data.map(d => d.embedding),
                             floats: floats.data.map(d => d.embedding.map(Math.fround)) }));
"""


def test_node_sdk_embeddings_decode_to_the_float_answer(gw, tmp_path):
    """The OpenAI Node SDK asks for base64 unless told otherwise and decodes it to floats itself:
    those are the float32 values of the float-format answer, exactly."""
    require_tool("node", "apt-get install -y nodejs npm")
    modules = ROOT / "tests" / "clients" / "node_modules"
    assert (modules / "openai").exists(), "run scripts/test-tools.sh (make test does)"
    (tmp_path / "node_modules").symlink_to(modules)
    script = tmp_path / "embed.mjs"
    script.write_text(NODE_EMBEDDINGS)
    done = subprocess.run(["node", str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=180,
                          env={"PATH": "/usr/bin:/bin", "BASE_URL": gw.url + "/v1", "KEY": gw.master_key})
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert [len(v) for v in out["packed"]] == [576, 576]
    assert out["packed"] == out["floats"]
