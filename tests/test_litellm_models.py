"""LiteLLM's model management, wildcard routing and access groups as a LiteLLM user's end-to-end
suite drives them: raw httpx against two live gateways (A and B) on one database, master key
sk-1234, no Redis (so a change made on A reaches B through the database poll), on SQLite and
Postgres. Request and answer shapes are those of LiteLLM's proxy docs (model_management,
wildcard_routing, model_access_groups)."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from .servers import Keystile

MASTER = {"Authorization": "Bearer sk-1234"}
SECRET = "sk-added-upstream-secret-0123456789"


def config(upstream) -> dict:
    def entry(name: str, model: str, **info) -> dict:
        return {"model_name": name, "litellm_params": {"model": model, "api_base": upstream.base_url,
                                                        "api_key": "upstream-secret"}, "model_info": info}
    return {"model_list": [
        entry("echo", "openai/echo-upstream", access_groups=["beta-models"]),
        entry("failing", "openai/fail"),
        entry("openai/echo-exact", "openai/echo-exact-config"),
        entry("openai/*", "openai/*"),
        entry("*", "openai/*"),
    ]}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def pair(request, tmp_path_factory, upstream):
    tmp = tmp_path_factory.mktemp(f"models-{request.param}")
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else f"sqlite+aiosqlite:///{tmp}/shared.db"
    a = Keystile(tmp, config(upstream), env={"KEYSTILE_MASTER_KEY": "sk-1234"}, database_url=url)
    b = Keystile(tmp, config(upstream), env={"KEYSTILE_MASTER_KEY": "sk-1234"}, database_url=url)
    with a, b:
        with httpx.Client(base_url=a.url, timeout=15) as ca, httpx.Client(base_url=b.url, timeout=15) as cb:
            yield ca, cb, b, url


def chat(client: httpx.Client, model: str, key: str = "sk-1234") -> httpx.Response:
    return client.post("/v1/chat/completions",
                       json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
                       headers={"Authorization": f"Bearer {key}"})


def until(check, within: float) -> float:
    """Seconds until check() holds; fails after `within`."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < within, f"not within {within} s"
        time.sleep(0.05)
    return time.monotonic() - start


def new_model(client: httpx.Client, upstream, name: str, model: str = "openai/echo-added", **info) -> dict:
    r = client.post("/model/new", headers=MASTER, json={
        "model_name": name, "litellm_params": {"model": model, "api_base": upstream.base_url, "api_key": SECRET},
        "model_info": info})
    assert r.status_code == 200, r.text
    return r.json()


def test_model_info_answers_in_litellm_shapes_without_credentials(pair):
    a, _, _, _ = pair
    r = a.get("/model/info", headers=MASTER)
    assert r.status_code == 200 and "upstream-secret" not in r.text
    echo = next(m for m in r.json()["data"] if m["model_name"] == "echo")
    assert echo["litellm_params"]["model"] == "openai/echo-upstream" and "api_key" not in echo["litellm_params"]
    assert echo["model_info"]["id"] == "echo-0" and echo["model_info"]["db_model"] is False
    assert echo["model_info"]["access_groups"] == ["beta-models"]
    assert a.get("/model/info", params={"litellm_model_id": "echo-0"}, headers=MASTER).json()["data"] == [echo]
    page = a.get("/v2/model/info", params={"model": "echo", "page": 1, "size": 10}, headers=MASTER).json()
    assert page["total_count"] == 1 and page["current_page"] == 1 and page["data"][0]["model_name"] == "echo"
    groups = a.get("/model_group/info", headers=MASTER).json()["data"]
    group = next(g for g in groups if g["model_group"] == "echo")
    assert group["providers"] == ["openai"] and group["mode"] == "chat" and "supports_vision" in group
    key = a.post("/key/generate", headers=MASTER, json={"models": ["echo"]}).json()["key"]
    mine = a.get("/model/info", headers={"Authorization": f"Bearer {key}"}).json()["data"]
    assert [m["model_name"] for m in mine] == ["echo"] and "api_base" not in mine[0]["litellm_params"]
    assert [g["model_group"] for g in a.get("/model_group/info", headers={"Authorization": f"Bearer {key}"})
            .json()["data"]] == ["echo"]


def test_a_model_added_on_a_is_served_by_b_within_a_second_then_updated_and_deleted(pair, upstream):
    a, b, _, url = pair
    name = f"added-{uuid.uuid4().hex[:6]}"
    row = new_model(a, upstream, name)
    assert row["model_name"] == name and row["model_id"] and SECRET not in str(row)
    assert row["litellm_params"]["model"] == "openai/echo-added" and "api_key" not in row["litellm_params"]
    model_id = row["model_id"]

    def served_by_b() -> bool:
        ids = [m["model_info"]["id"] for m in b.get("/model/info", headers=MASTER).json()["data"]]
        return model_id in ids
    took = until(served_by_b, 1.5)
    assert took < 1.5
    upstream.forget()
    assert chat(b, name).status_code == 200
    assert upstream.requests[-1]["model"] == "echo-added"
    assert upstream.headers[-1].get("authorization") == f"Bearer {SECRET}"  # decrypted for the upstream only
    assert SECRET not in b.get("/model/info", headers=MASTER).text
    assert SECRET not in _stored_params(url, model_id), "the credential is stored encrypted"

    r = a.post("/model/update", headers=MASTER, json={"model_info": {"id": model_id},
                                                       "litellm_params": {"model": "openai/echo-updated"}})
    assert r.status_code == 200 and r.json()["litellm_params"]["model"] == "openai/echo-updated"

    def updated_on_b() -> bool:
        upstream.forget()
        return chat(b, name).status_code == 200 and upstream.requests[-1]["model"] == "echo-updated"
    until(updated_on_b, 1.5)
    assert upstream.headers[-1].get("authorization") == f"Bearer {SECRET}"  # kept: not sent in the update
    r = a.patch(f"/model/{model_id}/update", headers=MASTER, json={"model_info": {"note": "patched"}})
    assert r.status_code == 200 and r.json()["model_info"]["note"] == "patched"

    r = a.post("/model/delete", headers=MASTER, json={"id": model_id})
    assert r.status_code == 200 and r.json() == {"message": f"Model: {model_id} deleted successfully"}
    until(lambda: not served_by_b(), 1.5)
    assert a.post("/model/delete", headers=MASTER, json={"id": model_id}).status_code == 404


def _stored_params(url: str, model_id: str) -> str:
    async def read() -> str:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                value = await conn.scalar(text("SELECT litellm_params FROM proxy_models WHERE model_id = :m"),
                                          {"m": model_id})
                return str(value)
        finally:
            await engine.dispose()
    return asyncio.run(read())


def test_models_survive_a_restart(pair, upstream):
    a, b, server_b, _ = pair
    name = f"kept-{uuid.uuid4().hex[:6]}"
    row = new_model(a, upstream, name)
    server_b.stop()
    server_b.start()
    ids = [m["model_info"]["id"] for m in b.get("/model/info", headers=MASTER).json()["data"]]
    assert row["model_id"] in ids
    upstream.forget()
    assert chat(b, name).status_code == 200 and upstream.requests[-1]["model"] == "echo-added"
    assert a.post("/model/delete", headers=MASTER, json={"id": row["model_id"]}).status_code == 200


def test_bad_model_input_is_a_clear_4xx(pair, upstream):
    a, _, _, _ = pair
    key = a.post("/key/generate", headers=MASTER, json={}).json()["key"]
    cases = [
        ({"model_name": "x"}, 400, "litellm_params"),
        ({"model_name": "x", "litellm_params": {"model": "no-provider"}}, 400, "litellm_params.model"),
        ({"model_name": "x", "litellm_params": {"model": "openai/x"}, "extra": 1}, 400, "extra"),
        ({"model_name": "x", "litellm_params": {"model": "llamacpp/a.gguf"}}, 400, "litellm_params.model"),
        ({"model_name": "x", "litellm_params": {"model": "openai/x", "api_base": upstream.base_url,
                                                "api_key": "os.environ/KEYSTILE_TEST_UNSET_VAR"}}, 400, "litellm_params"),
        ({"model_name": "x", "litellm_params": {"model": "vllm/x"}}, 400, "litellm_params"),  # needs api_base
        ({"model_name": "", "litellm_params": {"model": "openai/x"}}, 400, "model_name"),
        ({"model_name": "x", "litellm_params": {"model": "openai/x", "api_base": upstream.base_url},
          "model_info": {"id": "echo-0"}}, 409, "model_info.id"),
    ]
    for body, status, param in cases:
        r = a.post("/model/new", headers=MASTER, json=body)
        assert r.status_code == status, (body, r.text)
        assert (r.json()["error"]["param"] or "").startswith(param), (body, r.text)
    r = a.post("/model/new", headers={"Authorization": f"Bearer {key}"},
               json={"model_name": "x", "litellm_params": {"model": "openai/x", "api_base": upstream.base_url}})
    assert r.status_code == 403
    assert a.post("/model/update", headers=MASTER, json={"litellm_params": {"model": "openai/y"}}).status_code == 400
    assert a.post("/model/update", headers=MASTER, json={"model_info": {"id": "nope"}}).status_code == 404
    r = a.post("/model/delete", headers=MASTER, json={"id": "echo-0"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "config_model"
    assert a.post("/model/delete", headers=MASTER, json={}).status_code == 400
    row = new_model(a, upstream, f"dup-{uuid.uuid4().hex[:6]}", id=f"fixed-{uuid.uuid4().hex[:6]}")
    again = a.post("/model/new", headers=MASTER, json={"model_name": "y", "litellm_params": {
        "model": "openai/x", "api_base": upstream.base_url}, "model_info": {"id": row["model_id"]}})
    assert again.status_code == 409
    r = a.post("/model/update", headers=MASTER, json={"model_info": {"id": row["model_id"]},
                                                       "litellm_params": {"model": "bad"}})
    assert r.status_code == 400
    assert a.post("/model/delete", headers=MASTER, json={"id": row["model_id"]}).status_code == 200


def test_wildcards_route_any_matching_name_and_exact_names_win(pair, upstream):
    a, _, _, _ = pair
    upstream.forget()
    assert chat(a, "openai/echo-wild").status_code == 200
    assert upstream.requests[-1]["model"] == "echo-wild"  # openai/* -> openai/echo-wild
    assert chat(a, "echo-star").status_code == 200
    assert upstream.requests[-1]["model"] == "echo-star"  # * -> openai/echo-star
    assert chat(a, "openai/echo-exact").status_code == 200
    assert upstream.requests[-1]["model"] == "echo-exact-config"  # the exact entry, not the pattern
    assert chat(a, "echo").status_code == 200 and upstream.requests[-1]["model"] == "echo-upstream"
    r = a.post("/v1/chat/completions", headers=MASTER, json={"model": "echo-stream", "stream": True,
                                                              "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200 and "data: [DONE]" in r.text
    names = [m["id"] for m in a.get("/v1/models", headers=MASTER).json()["data"]]
    assert {"echo", "openai/*", "*"} <= set(names)
    # a wildcard added through the API, more specific than "*"
    prefix = f"team{uuid.uuid4().hex[:4]}"
    row = new_model(a, upstream, f"{prefix}/*", model="openai/echo-*")
    assert chat(a, f"{prefix}/via-api").status_code == 200 and upstream.requests[-1]["model"] == "echo-via-api"
    assert a.post("/model/delete", headers=MASTER, json={"id": row["model_id"]}).status_code == 200
    assert chat(a, f"{prefix}/via-api").status_code == 200  # "*" again: openai/<the whole name>
    assert upstream.requests[-1]["model"] == f"{prefix}/via-api"
    assert a.get("/v1/model/info", headers=MASTER).json()["data"]  # LiteLLM's /v1 alias


def test_key_models_star_all_team_models_patterns_and_access_groups(pair, upstream):
    a, b, _, _ = pair

    def key(**fields) -> str:
        r = a.post("/key/generate", headers=MASTER, json=fields)
        assert r.status_code == 200, r.text
        return r.json()["key"]

    star = key(models=["*"])
    assert chat(a, "echo", star).status_code == 200 and chat(a, "openai/echo-any", star).status_code == 200
    team = a.post("/team/new", headers=MASTER, json={"models": ["echo"]}).json()["team_id"]
    team_key = key(models=["all-team-models"], team_id=team)
    assert chat(a, "echo", team_key).status_code == 200
    assert chat(a, "failing", team_key).status_code == 403
    assert chat(a, "echo", key(models=["all-team-models"])).status_code == 403  # no team: no team models
    group_key = key(models=["beta-models"])  # model_info.access_groups of config.yaml's echo
    assert chat(a, "echo", group_key).status_code == 200 and chat(a, "failing", group_key).status_code == 403
    group_team = a.post("/team/new", headers=MASTER, json={"models": ["beta-models"]}).json()["team_id"]
    assert chat(a, "echo", key(team_id=group_team)).status_code == 200
    pattern_key = key(models=["openai/*"])
    assert chat(a, "openai/echo-p", pattern_key).status_code == 200 and chat(a, "echo", pattern_key).status_code == 403

    # An access group that a model added through the API brings: a key made for the group before
    # the model exists may use it on every instance once it is there.
    group = f"grp-{uuid.uuid4().hex[:6]}"
    waiting = key(models=[group])
    name = f"grouped-{uuid.uuid4().hex[:6]}"
    assert chat(b, name, waiting).status_code == 403  # "*" serves the name, the key may not use it
    row = new_model(a, upstream, name, access_groups=[group])
    until(lambda: chat(b, name, waiting).status_code == 200, 1.5)
    assert chat(b, "echo", waiting).status_code == 403
    assert a.post("/model/delete", headers=MASTER, json={"id": row["model_id"]}).status_code == 200
    until(lambda: chat(b, name, waiting).status_code == 403, 1.5)


def test_models_added_through_the_api_and_the_deploy_api_coexist(pair, upstream):
    a, _, _, _ = pair
    name = f"deployed-{uuid.uuid4().hex[:6]}"
    r = a.post("/api/v1/deploy", headers=MASTER, json={"api_name": name, "api_base": upstream.base_url,
                                                       "model": "echo-deployed", "api_key": "k"})
    assert r.status_code == 200, r.text  # not refused although the "*" entry matches every name
    deployment_id = r.json()["deployment_id"]
    until(lambda: a.get(f"/api/v1/deployments/{deployment_id}/status", headers=MASTER).json()["status"] == "active", 30)
    listed = [m for m in a.get("/model/info", headers=MASTER).json()["data"] if m["model_name"] == name]
    assert len(listed) == 1 and listed[0]["model_info"]["managed_deployment"] is True
    row = new_model(a, upstream, name)  # the same public name: one more deployment of it
    assert len([m for m in a.get("/model/info", headers=MASTER).json()["data"] if m["model_name"] == name]) == 2
    seen = set()
    for _ in range(30):
        upstream.forget()
        assert chat(a, name).status_code == 200
        seen.add(upstream.requests[-1]["model"])
    assert seen == {"echo-deployed", "echo-added"}  # load-balanced over both
    assert a.post(f"/api/v1/deployments/{deployment_id}/stop", headers=MASTER).status_code == 200
    assert a.post("/model/delete", headers=MASTER, json={"id": row["model_id"]}).status_code == 200


def test_with_redis_a_change_arrives_without_waiting_for_the_poll(tmp_path, upstream, redis_url):
    """Both gateways poll the database only every 30 s here: B serves A's new model at once
    because A announces it on Redis."""
    cfg = {**config(upstream), "keystile_settings": {"model_poll_interval": 30}}
    url = f"sqlite+aiosqlite:///{tmp_path}/shared.db"
    env = {"KEYSTILE_MASTER_KEY": "sk-1234", "REDIS_URL": redis_url}
    with Keystile(tmp_path, cfg, env=env, database_url=url) as ka, Keystile(tmp_path, cfg, env=env, database_url=url) as kb:
        with httpx.Client(base_url=ka.url, timeout=15) as a, httpx.Client(base_url=kb.url, timeout=15) as b:
            name = f"pubsub-{uuid.uuid4().hex[:6]}"
            row = new_model(a, upstream, name, access_groups=["pubsub-group"])
            until(lambda: name in [m["model_name"] for m in b.get("/model/info", headers=MASTER).json()["data"]], 1.0)
            assert a.post("/model/delete", headers=MASTER, json={"id": row["model_id"]}).status_code == 200
            until(lambda: name not in [m["model_name"] for m in b.get("/model/info", headers=MASTER).json()["data"]],
                  1.0)
