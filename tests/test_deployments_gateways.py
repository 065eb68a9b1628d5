"""Deployments across gateway processes on one database, with the real SmolLM2 model: a deployment
made through one gateway is served by the other from a worker of its own, and a stop made through
either ends it in both; a database outage while a deployment starts is logged once, the model is
served meanwhile, and its state is written once the database is back (Postgres behind the
cuttable TCP proxy of tests/tcpproxy.py)."""

from __future__ import annotations

import time

import httpx
import openai

from .servers import Keystile
from .test_dialect_deployments import GGUF, wait_status
from .test_usage_durability import FreshDatabase, database  # noqa: F401  (the fixture)

ASK = {"max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}


def deploy(ks: Keystile, name: str) -> str:
    r = httpx.post(f"{ks.url}/api/v1/deploy", headers={"Authorization": f"Bearer {ks.master_key}"}, timeout=30,
                   json={"model_id": GGUF, "api_name": name, "n_ctx": 512, "n_threads": 1})
    assert r.status_code == 200, r.text
    return r.json()["deployment_id"]


def workers(ks: Keystile) -> dict[str, dict]:
    return httpx.get(f"{ks.url}/health/readiness", timeout=10).json()["local_models"]


def until(check, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def chat(ks: Keystile, model: str) -> int:
    return httpx.post(f"{ks.url}/v1/chat/completions", headers={"Authorization": f"Bearer {ks.master_key}"},
                      json={"model": model, **ASK}, timeout=60).status_code


def test_deploy_and_stop_take_effect_in_every_gateway(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path}/shared.db"
    a = Keystile(tmp_path, {"model_list": []}, database_url=url).start()
    b = Keystile(tmp_path, {"model_list": []}, database_url=url)
    try:
        b.start()
        deployment_id = deploy(a, "shared")
        assert wait_status(a, deployment_id, "active")["status"] == "active"
        assert until(lambda: chat(b, "shared") == 200, 60), b.logs()[-2000:]  # B started a worker of its own
        (a_worker,), (b_worker,) = workers(a).values(), workers(b).values()
        assert a_worker["pid"] != b_worker["pid"] and b_worker["state"] == "ready"
        client = openai.OpenAI(base_url=f"{b.url}/v1", api_key=b.master_key, max_retries=0, timeout=60)
        assert client.chat.completions.create(model="shared", **ASK).usage.completion_tokens > 0

        stopped = httpx.post(f"{b.url}/api/v1/deployments/{deployment_id}/stop",
                             headers={"Authorization": f"Bearer {b.master_key}"}).json()
        assert stopped["status"] == "stopped"
        assert until(lambda: chat(a, "shared") == 404, 5)  # A ended it too
        assert workers(a) == {} and workers(b) == {}
        assert "deployment stopped through another gateway process: ending it here" in a.logs()
    finally:
        a.stop()
        b.stop()


def test_a_database_outage_while_a_deployment_starts_is_survived(tmp_path, database: FreshDatabase):  # noqa: F811
    with Keystile(tmp_path, {"model_list": []}, database_url=database.url) as ks:
        deployment_id = deploy(ks, "weathered")
        database.proxy.cut()
        try:
            assert until(lambda: chat(ks, "weathered") == 200, 60)  # served while the database is away
            time.sleep(2)  # the follower polls (and backs off) meanwhile
        finally:
            database.proxy.restore()
        assert wait_status(ks, deployment_id, "active", timeout=30)["status"] == "active"
        logs = ks.logs()
        assert logs.count("deployments: cannot reach the database") == 1, logs[-3000:]
        assert "deployments: database reachable again" in logs
        assert "Traceback" not in logs
        stopped = httpx.post(f"{ks.url}/api/v1/deployments/{deployment_id}/stop",
                             headers={"Authorization": f"Bearer {ks.master_key}"}).json()
        assert stopped["status"] == "stopped" and chat(ks, "weathered") == 404


def test_under_serve_workers_every_process_serves_and_stops_a_deployment(tmp_path, upstream):
    """`keystile serve --workers 2`: each request on a new connection lands on either process (on main
    before this change: 23 of 40 answered after the deploy, 20 of 40 still answered after the stop)."""
    with Keystile(tmp_path, {"model_list": []}, args=("--workers", "2")) as ks:
        headers = {"Authorization": f"Bearer {ks.master_key}"}
        deployment_id = httpx.post(f"{ks.url}/api/v1/deploy", headers=headers, json={
            "api_name": "box", "api_base": upstream.base_url, "model": "echo-upstream"}).json()["deployment_id"]
        assert wait_status(ks, deployment_id, "active")["status"] == "active"
        time.sleep(2.5)  # the other process's next poll
        assert {chat(ks, "box") for _ in range(40)} == {200}
        httpx.post(f"{ks.url}/api/v1/deployments/{deployment_id}/stop", headers=headers)
        time.sleep(2.5)
        assert {chat(ks, "box") for _ in range(40)} == {404}
