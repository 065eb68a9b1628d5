"""Async jobs across gateways on one database (real Keystile servers, the fake upstream streaming a
word every 0.2 s for `slowstream`): a cancel made through another gateway stops the generation
where it runs, billed for what ran; a gateway killed mid-job is taken over by a live one within
the job's lease; a job cut by the 20 s shutdown drain and run again is billed once."""

from __future__ import annotations

import time

import httpx

from .conftest import model_entry
from .servers import Keystile

PRICES = {"input_cost_per_token": 0.001, "output_cost_per_token": 0.002}


def config(upstream) -> dict:
    return {"model_list": [model_entry(upstream, "slow", "slowstream", model_info=PRICES)],
            "keystile_settings": {"jobs": {"workers": 2}}}


def gateway(tmp_path, upstream) -> Keystile:
    return Keystile(tmp_path, config(upstream), database_url=f"sqlite+aiosqlite:///{tmp_path}/jobs.db")


def words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))  # answered as "echo: w0 ... w<n-1>": n + 1 words


def new_key(ks: Keystile) -> str:
    return httpx.post(f"{ks.url}/key/generate", headers={"Authorization": f"Bearer {ks.master_key}"},
                      json={}).json()["key"]


def status(ks: Keystile, key: str, job_id: str) -> dict:
    return httpx.get(f"{ks.url}/status/{job_id}", headers={"Authorization": f"Bearer {key}"}, timeout=10).json()


def wait_status(ks: Keystile, key: str, job_id: str, want: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while (job := status(ks, key, job_id))["status"] != want and time.monotonic() < deadline:
        time.sleep(0.2)
    return job


def usage_rows(ks: Keystile) -> list[dict]:
    """The usage records of the job runs in this test's database (route /run), whatever their id."""
    rows = httpx.get(f"{ks.url}/spend/logs", params={"size": 1000},
                     headers={"Authorization": f"Bearer {ks.master_key}"}, timeout=10).json()["data"]
    return [r for r in rows if r["route"] == "/run"]


def spend(ks: Keystile, key: str) -> float:
    return httpx.get(f"{ks.url}/key/info", params={"key": key},
                     headers={"Authorization": f"Bearer {ks.master_key}"}, timeout=10).json()["info"]["spend"]


def submit(ks: Keystile, key: str, n_words: int) -> str:
    r = httpx.post(f"{ks.url}/run", headers={"Authorization": f"Bearer {key}"},
                   json={"input": {"prompt": words(n_words), "model": "slow", "max_tokens": 500}})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def test_cancel_through_another_gateway_stops_the_generation_and_bills_what_ran(tmp_path, upstream):
    a = gateway(tmp_path, upstream).start()
    b = gateway(tmp_path, upstream)
    try:
        key = new_key(a)
        job_id = submit(a, key, 100)  # 101 words: ~20 s of streaming
        running = wait_status(a, key, job_id, "IN_PROGRESS", 10)
        assert running["status"] == "IN_PROGRESS"
        b.start()
        time.sleep(1.0)
        cancelled = httpx.post(f"{b.url}/cancel/{job_id}", headers={"Authorization": f"Bearer {key}"}).json()
        assert cancelled == {"id": job_id, "status": "CANCELLED"}
        at = time.monotonic()
        while not (rows := usage_rows(a)) and time.monotonic() - at < 5:
            time.sleep(0.2)  # written by A when it stopped the run, not when the stream would have ended
        assert len(rows) == 1, rows
        assert rows[0]["request_id"] == f"job-{job_id}" and rows[0]["status"] == 499
        assert 0 < rows[0]["completion_tokens"] < 101  # the words streamed before the cancel
        assert "was cancelled or taken over elsewhere: stopping it here" in a.logs()
        assert status(b, key, job_id)["status"] == "CANCELLED"
    finally:
        a.stop()
        b.stop()


def test_a_killed_gateways_job_is_taken_over_and_billed_once(tmp_path, upstream):
    a = gateway(tmp_path, upstream).start()
    b = gateway(tmp_path, upstream)
    try:
        key = new_key(a)
        job_id = submit(a, key, 100)  # ~20 s: B starts meanwhile
        first = wait_status(a, key, job_id, "IN_PROGRESS", 10)
        assert first["status"] == "IN_PROGRESS"
        b.start()
        a.proc.kill()  # SIGKILL mid-job: no drain, nothing settled
        a.proc.wait()
        assert status(b, key, job_id)["status"] == "IN_PROGRESS"  # still A's
        done = wait_status(b, key, job_id, "COMPLETED", 45)  # B notices within a third of the lease
        assert done["status"] == "COMPLETED" and done["workerId"] != first["workerId"], done
        assert done["output"]["output"] == "echo: " + words(100)
        time.sleep(1.5)  # the usage writer's flush
        rows = usage_rows(b)
        assert [(r["request_id"], r["status"]) for r in rows] == [(f"job-{job_id}", 200)]
        assert spend(b, key) == rows[0]["cost"] > 0
    finally:
        a.stop()
        b.stop()


def test_a_job_cut_by_the_shutdown_drain_runs_again_and_is_billed_once(tmp_path, upstream):
    a = gateway(tmp_path, upstream).start()
    try:
        key = new_key(a)
        job_id = submit(a, key, 120)  # ~24 s: longer than the 20 s drain
        assert wait_status(a, key, job_id, "IN_PROGRESS", 10)["status"] == "IN_PROGRESS"
        a.stop()  # SIGTERM: the drain waits 20 s, then stops the run and queues the job again
        assert "running jobs did not finish within 20 s and were requeued" in a.logs()
        a.start()
        done = wait_status(a, key, job_id, "COMPLETED", 60)
        assert done["status"] == "COMPLETED" and done["output"]["output"] == "echo: " + words(120)
        time.sleep(1.5)
        rows = usage_rows(a)
        # One record: the first run's (cut at shutdown: 499, the tokens it streamed); the re-run's
        # record carries the same request id and is not stored again.
        assert [(r["request_id"], r["status"]) for r in rows] == [(f"job-{job_id}", 499)], rows
        assert spend(a, key) == rows[0]["cost"] > 0
    finally:
        a.stop()
