"""The serverless endpoint's async job API (seed 000_84e3b80e43b44264.txt) against a live Keystile:
the guide's curl lines and Python snippets with only the base URL and key changed (ENDPOINT_ID
names a model), job visibility per key, bad input, and 200 jobs surviving a gateway restart, each
ending once and billed once."""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from .conftest import model_entry
from .servers import Keystile

ENDPOINT_ID = "fingpt"


def config(upstream, **jobs) -> dict:
    return {"model_list": [model_entry(upstream, "fingpt-mt-llama3-8b-lora-gguf", "echo-upstream"),
                           model_entry(upstream, "paused", "pause"),
                           model_entry(upstream, "failing", "fail")],
            "keystile_settings": {"jobs": {"workers": 4, "endpoints": {ENDPOINT_ID: "fingpt-mt-llama3-8b-lora-gguf"},
                                           **jobs}}}


@pytest.fixture(scope="module")
def server(tmp_path_factory, upstream):
    with Keystile(tmp_path_factory.mktemp("jobs"), config(upstream)) as ks:
        yield ks


def new_key(server: Keystile) -> str:
    r = httpx.post(f"{server.url}/key/generate", headers={"Authorization": f"Bearer {server.master_key}"}, json={})
    assert r.status_code == 200, r.text
    return r.json()["key"]


@pytest.fixture(scope="module")
def API_KEY(server):
    return new_key(server)


def curl(*args: str) -> dict:
    out = subprocess.run(["curl", "-sS", *args], capture_output=True, text=True, timeout=60, check=True).stdout
    return json.loads(out)


def test_guide_curl_runsync(server, API_KEY):
    result = curl("-X", "POST", f"{server.url}/v2/{ENDPOINT_ID}/runsync",
                  "-H", f"Authorization: Bearer {API_KEY}", "-H", "Content-Type: application/json",
                  "-d", """{
    "input": {
      "prompt": "What is the difference between bull and bear markets?",
      "max_tokens": 200,
      "temperature": 0.7
    }
  }""")
    assert result["status"] == "COMPLETED"
    assert result["output"]["status"] == "success" and result["output"]["model"] == "fingpt-mt-llama3-8b-lora-gguf"
    assert result["output"]["output"] == "echo: What is the difference between bull and bear markets?"
    assert result["delayTime"] >= 0 and result["executionTime"] >= 0 and result["id"]


def test_guide_curl_run_then_status(server, API_KEY, upstream):
    submitted = curl("-X", "POST", f"{server.url}/v2/{ENDPOINT_ID}/run", "-H", f"Authorization: Bearer {API_KEY}",
                     "-H", "Content-Type: application/json", "-d", '{"input": {"prompt": "Test"}}')
    JOB_ID = submitted["id"]
    assert submitted["status"] in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED")
    deadline = time.monotonic() + 20
    while (status := curl(f"{server.url}/v2/{ENDPOINT_ID}/status/{JOB_ID}",
                          "-H", f"Authorization: Bearer {API_KEY}"))["status"] != "COMPLETED":
        assert status["status"] in ("IN_QUEUE", "IN_PROGRESS") and time.monotonic() < deadline, status
        time.sleep(0.1)
    assert status["output"]["output"] == "echo: Test"
    sent = next(r for r in reversed(upstream.requests) if last_text(r) == "Test")
    assert sent["max_tokens"] == 256 and sent["temperature"] == 0.7  # the guide's defaults


def test_guide_python_polling(server, API_KEY, capsys):
    BASE_URL = f"{server.url}/v2/{ENDPOINT_ID}"
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    response = httpx.post(f"{BASE_URL}/run", headers=headers, json={
        "input": {"prompt": "What are the key financial metrics for valuation?", "max_tokens": 250}})
    job_id = response.json()['id']
    while True:
        result = httpx.get(f"{BASE_URL}/status/{job_id}", headers=headers).json()
        status = result['status']
        if status == 'COMPLETED':
            print(f"Output: {result['output']['output']}")
            break
        elif status == 'FAILED':
            print(f"Error: {result.get('error')}")
            break
        time.sleep(0.1)
    assert capsys.readouterr().out == "Output: echo: What are the key financial metrics for valuation?\n"


def test_guide_batch_processing_with_runsync(server, API_KEY):
    prompts = ["Analyze: Market correction underway.", "Analyze: Fed signals rate hike.",
               "Analyze: Earnings beat expectations."]

    def process_prompt(prompt):
        response = httpx.post(f"{server.url}/v2/{ENDPOINT_ID}/runsync", headers={"Authorization": f"Bearer {API_KEY}"},
                              json={"input": {"prompt": prompt, "max_tokens": 100}}, timeout=120)
        return response.json()['output']['output']

    with ThreadPoolExecutor(max_workers=3) as executor:
        results = list(executor.map(process_prompt, prompts))
    assert results == [f"echo: {p}" for p in prompts]


def test_guide_openai_client_under_v2(server, API_KEY):
    client = openai.OpenAI(api_key=API_KEY, base_url=f"{server.url}/v2/{ENDPOINT_ID}/openai/v1")
    response = client.chat.completions.create(model="fingpt-mt-llama3-8b-lora-gguf",
                                              messages=[{"role": "user", "content": "Explain P/E ratio in simple terms."}],
                                              max_tokens=150, temperature=0.7, timeout=120)
    assert response.choices[0].message.content == "echo: Explain P/E ratio in simple terms."


def test_root_routes_take_messages_and_model(server, API_KEY):
    r = httpx.post(f"{server.url}/runsync", headers={"Authorization": f"Bearer {API_KEY}"},
                   json={"input": {"messages": [{"role": "user", "content": "hey"}], "model": "fingpt-mt-llama3-8b-lora-gguf"}})
    assert r.json()["status"] == "COMPLETED" and r.json()["output"]["output"] == "echo: hey"


def test_failed_job_carries_the_error(server, API_KEY):
    r = httpx.post(f"{server.url}/runsync", headers={"Authorization": f"Bearer {API_KEY}"},
                   json={"input": {"prompt": "x", "model": "failing"}}, timeout=60)
    assert r.json()["status"] == "FAILED" and "upstream" in r.json()["error"]


def test_runsync_that_times_out_answers_like_run(server, API_KEY):
    r = httpx.post(f"{server.url}/runsync?wait=0", headers={"Authorization": f"Bearer {API_KEY}"},
                   json={"input": {"prompt": "slow one", "model": "paused"}})
    assert r.status_code == 200 and r.json()["status"] in ("IN_QUEUE", "IN_PROGRESS") and r.json()["id"]


def test_cancel_a_queued_job(tmp_path, upstream):
    with Keystile(tmp_path, config(upstream, workers=1)) as ks:
        headers = {"Authorization": f"Bearer {ks.master_key}"}
        ids = [httpx.post(f"{ks.url}/run", headers=headers, json={"input": {"prompt": f"c{i}", "model": "paused"}})
               .json()["id"] for i in range(20)]
        r = httpx.post(f"{ks.url}/cancel/{ids[-1]}", headers=headers)
        assert r.status_code == 200 and r.json() == {"id": ids[-1], "status": "CANCELLED"}
        deadline = time.monotonic() + 20
        while (final := [httpx.get(f"{ks.url}/status/{i}", headers=headers).json()["status"] for i in ids]).count(
                "COMPLETED") < 19 and time.monotonic() < deadline:
            time.sleep(0.3)
        assert final[:19] == ["COMPLETED"] * 19 and final[19] == "CANCELLED"
        assert not any(last_text(r) == "c19" for r in upstream.requests)
        again = httpx.post(f"{ks.url}/cancel/{ids[0]}", headers=headers)  # a finished job stays as it ended
        assert again.json() == {"id": ids[0], "status": "COMPLETED"}


def test_another_keys_job_is_not_found(server, API_KEY):
    job_id = httpx.post(f"{server.url}/run", headers={"Authorization": f"Bearer {API_KEY}"},
                        json={"input": {"prompt": "mine"}}).json()["id"]
    other = {"Authorization": f"Bearer {new_key(server)}"}
    for r in (httpx.get(f"{server.url}/status/{job_id}", headers=other),
              httpx.post(f"{server.url}/cancel/{job_id}", headers=other)):
        assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found"


@pytest.mark.parametrize("path, body, status, param", [
    ("/run", {"prompt": "no input"}, 400, "input"),
    ("/run", {"input": "text"}, 400, "input"),
    ("/run", {"input": {"max_tokens": 5}}, 400, "input.prompt"),
    ("/run", {"input": {"prompt": "x", "max_tokens": 0}}, 400, "input.max_tokens"),
    ("/run", {"input": {"prompt": "x", "temperature": 9}}, 400, "input.temperature"),
    ("/run", {"input": {"prompt": "x", "model": "nope"}}, 404, None),
    ("/v2/no-such-endpoint/run", {"input": {"prompt": "x"}}, 404, None),
])
def test_bad_input(server, API_KEY, path, body, status, param):
    r = httpx.post(f"{server.url}{path}", headers={"Authorization": f"Bearer {API_KEY}"}, json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param


def test_unknown_job_id(server, API_KEY):
    r = httpx.get(f"{server.url}/status/not-a-job", headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 404 and "not-a-job" in r.json()["error"]["message"]
    assert httpx.get(f"{server.url}/status/not-a-job").status_code == 401


def test_finished_jobs_expire(tmp_path, upstream):
    with Keystile(tmp_path, config(upstream, keep_finished_s=1)) as ks:
        headers = {"Authorization": f"Bearer {ks.master_key}"}
        done = httpx.post(f"{ks.url}/runsync", headers=headers, json={"input": {"prompt": "brief"}}).json()
        assert done["status"] == "COMPLETED"
        time.sleep(1.5)
        assert httpx.get(f"{ks.url}/status/{done['id']}", headers=headers).status_code == 404


def last_text(request: dict) -> str:
    """The text of a recorded upstream request's last message ("" for embeddings, rerank, tool
    results or content parts that other tests of the session sent to the shared upstream)."""
    content = (request.get("messages") or [{}])[-1].get("content")
    return content if isinstance(content, str) else ""


def test_200_jobs_survive_a_restart_each_ending_once_and_billed_once(tmp_path, upstream, pg_url):
    ks = Keystile(tmp_path, config(upstream, workers=2), database_url=pg_url).start()  # 200 x 0.1 s / 2 = 10 s
    try:
        key = new_key(ks)
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(headers=headers, timeout=30) as client, ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(lambda i: client.post(f"{ks.url}/run", json={
                "input": {"prompt": f"restart {i}", "model": "paused"}}).json()["id"], range(200)))
        ks.stop()  # mid-way: running jobs finish, queued ones wait in the database
        first = Counter(r["messages"][-1]["content"] for r in upstream.requests
                        if last_text(r).startswith("restart "))
        assert 0 < sum(first.values()) < 200, "the restart did not happen mid-way"
        ks.start()
        deadline = time.monotonic() + 120
        with httpx.Client(headers=headers, timeout=30) as client:
            while True:
                states = Counter(client.get(f"{ks.url}/status/{i}").json()["status"] for i in ids)
                if states["COMPLETED"] == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert states == {"COMPLETED": 200}, states
            ran = Counter(r["messages"][-1]["content"] for r in upstream.requests
                          if last_text(r).startswith("restart "))
            assert len(ran) == 200 and set(ran.values()) == {1}, "a job ran twice"
            deadline = time.monotonic() + 10
            while True:
                rows = client.get(f"{ks.url}/spend/logs", params={"api_key": key, "size": 1000},
                                  headers={"Authorization": f"Bearer {ks.master_key}"}).json()["data"]
                if len(rows) >= 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.3)
            assert len(rows) == 200 and {r["route"] for r in rows} == {"/run"} and {r["status"] for r in rows} == {200}
    finally:
        ks.stop()


def test_jobs_of_a_killed_gateway_run_after_its_restart(tmp_path, upstream):
    ks = Keystile(tmp_path, config(upstream, workers=2)).start()
    try:
        headers = {"Authorization": f"Bearer {ks.master_key}"}
        with httpx.Client(headers=headers, timeout=30) as client:
            ids = [client.post(f"{ks.url}/run", json={"input": {"prompt": f"killed {i}", "model": "paused"}}).json()["id"]
                   for i in range(20)]
            time.sleep(0.3)
            ks.proc.kill()  # no drain: the running jobs are left IN_PROGRESS
            ks.proc.wait()
            ks.start()  # same host, its pid gone: its running jobs are queued again at once
            deadline = time.monotonic() + 30
            while (states := Counter(client.get(f"{ks.url}/status/{i}").json()["status"] for i in ids)) != {
                    "COMPLETED": 20} and time.monotonic() < deadline:
                time.sleep(0.3)
        assert states == {"COMPLETED": 20}
        ran = Counter(r["messages"][-1]["content"] for r in upstream.requests
                      if last_text(r).startswith("killed "))
        assert len(ran) == 20 and max(ran.values()) <= 2  # at most the two that were running ran twice
    finally:
        ks.stop()
