"""LiteLLM's admin API as a LiteLLM user's end-to-end suite calls it: raw httpx against a live
gateway with master key sk-1234, request bodies and answer fields as LiteLLM's proxy docs show
them, on SQLite and Postgres."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from .conftest import relay_config
from .servers import Keystile

MASTER = {"Authorization": "Bearer sk-1234"}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def proxy(request, tmp_path_factory, upstream):
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    server = Keystile(tmp_path_factory.mktemp(f"litellm-{request.param}"), relay_config(upstream),
                      env={"KEYSTILE_MASTER_KEY": "sk-1234"}, database_url=url)
    server.master_key = "sk-1234"
    with server:
        with httpx.Client(base_url=server.url, timeout=15) as client:
            yield client


def chat(proxy: httpx.Client, key: str, model: str = "echo") -> httpx.Response:
    return proxy.post("/v1/chat/completions",
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
                      headers={"Authorization": f"Bearer {key}"})


def test_user_new_with_key_fields(proxy):
    # docs: "The request is a normal /key/generate request body + a max_budget field."
    user_id = f"krrish-{uuid.uuid4().hex[:6]}@berri.ai"
    alias = f"krrish-key-{uuid.uuid4().hex[:6]}"
    r = proxy.post("/user/new", headers=MASTER, json={
        "user_id": user_id, "models": ["echo"], "max_budget": 10, "key_alias": alias, "duration": "20m",
        "aliases": {"my-echo": "echo"}, "metadata": {"team": "core-infra"}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["key"].startswith("sk-") and body["user_id"] == user_id and body["max_budget"] == 10.0
    assert body["expires"] and body["key_alias"] == alias
    assert chat(proxy, body["key"], "my-echo").status_code == 200  # the key's alias works
    assert chat(proxy, body["key"], "failing").status_code == 403  # the user's models hold
    info = proxy.get("/key/info", params={"key": body["key"]}, headers=MASTER).json()["info"]
    assert info["key_alias"] == alias and info["user_id"] == user_id and info["expires"]
    assert info["metadata"] == {"team": "core-infra"} and info["aliases"] == {"my-echo": "echo"}
    user = proxy.get("/user/info", params={"user_id": user_id}, headers=MASTER).json()
    assert user["user_info"]["max_budget"] == 10.0 and user["user_info"]["models"] == ["echo"]
    assert [k["token"] for k in user["keys"]] == [body["token"]]


def test_user_new_is_all_or_nothing(proxy):
    alias = f"taken-{uuid.uuid4().hex[:6]}"
    assert proxy.post("/key/generate", headers=MASTER, json={"key_alias": alias}).status_code == 200
    user_id = f"u-{uuid.uuid4().hex[:6]}"
    r = proxy.post("/user/new", headers=MASTER, json={"user_id": user_id, "key_alias": alias})
    assert r.status_code == 409
    assert proxy.get("/user/info", params={"user_id": user_id}, headers=MASTER).status_code == 404
    r = proxy.post("/user/new", headers=MASTER, json={"key_alias": "x", "auto_create_key": False})
    assert r.status_code == 400 and r.json()["error"]["param"] == "key_alias"


def test_user_and_key_update_take_spend(proxy):
    user = proxy.post("/user/new", headers=MASTER, json={"max_budget": 5}).json()
    r = proxy.post("/user/update", headers=MASTER, json={"user_id": user["user_id"], "spend": 1.5})
    assert r.status_code == 200 and r.json()["spend"] == 1.5
    r = proxy.post("/key/update", headers=MASTER, json={"key": user["key"], "spend": 0.25})
    assert r.status_code == 200 and r.json()["spend"] == 0.25
    assert proxy.post("/user/update", headers=MASTER, json={"user_id": user["user_id"], "spend": -1}).status_code == 400


def test_key_generate_answers_token_id_and_accepts_a_new_user(proxy):
    user_id = f"new-user-{uuid.uuid4().hex[:6]}"
    r = proxy.post("/key/generate", headers=MASTER, json={"user_id": user_id, "models": ["echo"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_id"] == body["token"] and len(body["token_id"]) == 64
    assert chat(proxy, body["key"]).status_code == 200
    user = proxy.get("/user/info", params={"user_id": user_id}, headers=MASTER).json()
    assert user["user_info"]["user_role"] == "internal_user" and [k["token"] for k in user["keys"]] == [body["token"]]
    rotated = proxy.post("/key/regenerate", headers=MASTER, json={"key": body["key"]}).json()
    assert rotated["token_id"] == rotated["token"] != body["token"]


def test_key_info_of_an_unknown_key_is_404_for_everyone(proxy):
    own = proxy.post("/key/generate", headers=MASTER, json={}).json()["key"]
    other = proxy.post("/key/generate", headers=MASTER, json={}).json()["key"]
    as_key = {"Authorization": f"Bearer {own}"}
    assert proxy.get("/key/info", params={"key": "sk-does-not-exist"}, headers=as_key).status_code == 404
    assert proxy.get("/key/info", params={"key": "sk-does-not-exist"}, headers=MASTER).status_code == 404
    assert proxy.get("/key/info", params={"key": other}, headers=as_key).status_code == 403
    assert proxy.get("/key/info", headers=as_key).status_code == 200


def test_team_alias_is_not_unique(proxy):
    a = proxy.post("/team/new", headers=MASTER, json={"team_alias": "ml-team"})
    b = proxy.post("/team/new", headers=MASTER, json={"team_alias": "ml-team"})
    assert a.status_code == b.status_code == 200 and a.json()["team_id"] != b.json()["team_id"]
    r = proxy.post("/team/update", headers=MASTER, json={"team_id": a.json()["team_id"], "team_alias": "ml-team"})
    assert r.status_code == 200


def test_spend_logs_in_litellm_shape_and_by_request_id(proxy):
    key = proxy.post("/key/generate", headers=MASTER, json={"user_id": f"logs-{uuid.uuid4().hex[:6]}"}).json()
    answer = chat(proxy, key["key"])
    assert answer.status_code == 200
    deadline = time.monotonic() + 10
    while not (rows := proxy.get("/spend/logs", params={"api_key": key["key"]}, headers=MASTER).json()):
        assert time.monotonic() < deadline, "no spend log row"
        time.sleep(0.1)
    [row] = rows
    assert row["request_id"] == answer.json()["id"] and row["request_id"].startswith("chatcmpl-")  # as LiteLLM
    assert row["metadata"]["x_request_id"] == answer.headers["x-request-id"] != row["request_id"]
    assert {"request_id", "api_key", "spend", "startTime", "endTime", "model", "prompt_tokens",
            "completion_tokens", "total_tokens", "user", "team_id", "metadata"} <= set(row)
    assert row["api_key"] == key["token"] and row["model"] == "echo" and row["call_type"] == "acompletion"
    assert row["user"] == key["user_id"] and row["endTime"] >= row["startTime"]
    assert row["total_tokens"] == row["prompt_tokens"] + row["completion_tokens"] > 0
    by_id = proxy.get("/spend/logs", params={"request_id": row["request_id"]}, headers=MASTER).json()
    assert [r["request_id"] for r in by_id] == [row["request_id"]]
    assert proxy.get("/spend/logs", params={"request_id": "chatcmpl-none"}, headers=MASTER).json() == []
    paged = proxy.get("/spend/logs", params={"api_key": key["key"], "page": 1}, headers=MASTER).json()
    assert paged["page"] == 1 and paged["size"] == 100 and paged["data"][0]["response_id"] == row["request_id"]
    by_x_id = proxy.get("/spend/logs", params={"request_id": answer.headers["x-request-id"]}, headers=MASTER).json()
    assert [r["request_id"] for r in by_x_id] == [row["request_id"]]  # the gateway's id finds it too
