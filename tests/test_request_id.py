"""`x-request-id` on every answer (inference and FastAPI routes, successes, errors, streams), the same
id as the request's usage record."""

from __future__ import annotations

import time

import httpx


def test_every_answer_has_a_request_id(relay):
    auth = {"Authorization": f"Bearer {relay.master_key}"}
    chat = {"model": "echo", "messages": [{"role": "user", "content": "id please"}]}
    answers = [
        httpx.post(relay.url + "/v1/chat/completions", headers=auth, json=chat),
        httpx.post(relay.url + "/v1/chat/completions", headers={"Authorization": "Bearer sk-nope"}, json=chat),
        httpx.post(relay.url + "/v1/chat/completions", headers=auth, json={**chat, "model": "nope"}),
        httpx.get(relay.url + "/v1/models", headers=auth),
        httpx.get(relay.url + "/health/liveliness"),
    ]
    with httpx.stream("POST", relay.url + "/v1/chat/completions", headers=auth, json={**chat, "stream": True}) as r:
        r.read()
        answers.append(r)
    ids = [a.headers.get("x-request-id") for a in answers]
    assert all(ids) and len(set(ids)) == len(ids), ids
    assert [a.status_code for a in answers] == [200, 401, 404, 200, 200, 200]
    deadline = time.monotonic() + 5
    logged: set = set()
    while time.monotonic() < deadline and not {ids[0], ids[2], ids[5]} <= logged:
        rows = httpx.get(relay.url + "/spend/logs", headers=auth, params={"size": 100}).json()["data"]
        logged = {row["request_id"] for row in rows}
        time.sleep(0.2)
    assert {ids[0], ids[2], ids[5]} <= logged  # the answer's id is its usage record's


def test_a_proxys_request_id_leads_the_gateways_own(relay):
    """nginx (or the client) sends X-Request-ID: the answer and the usage record carry it, followed by the
    gateway's own id, so a repeated X-Request-ID still gives every request its own usage record and charge."""
    auth = {"Authorization": f"Bearer {relay.master_key}", "X-Request-ID": "nginx-0a1b2c3d"}
    answers = [httpx.post(relay.url + "/v1/chat/completions", headers=auth,
                          json={"model": "echo", "messages": [{"role": "user", "content": "mine"}]}) for _ in range(3)]
    ids = [a.headers.get_list("x-request-id") for a in answers]
    assert all(len(i) == 1 and i[0].startswith("nginx-0a1b2c3d-") for i in ids) and len({i[0] for i in ids}) == 3
    deadline = time.monotonic() + 5
    logged: set = set()
    while time.monotonic() < deadline and not {i[0] for i in ids} <= logged:
        rows = httpx.get(relay.url + "/spend/logs", headers=auth, params={"size": 100}).json()["data"]
        logged = {row["request_id"] for row in rows}
        time.sleep(0.2)
    assert {i[0] for i in ids} <= logged  # three requests, three usage records: none skipped as a duplicate
