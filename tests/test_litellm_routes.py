"""LiteLLM's proxy routes and semantics as a LiteLLM user's end-to-end suite drives them: raw httpx
(and the openai SDK's OpenAI and AzureOpenAI clients, as LiteLLM's docs show them) against a live
gateway with master key sk-1234, on SQLite with in-process limits and on Postgres with Redis limits.
Budgets admit as LiteLLM does; root-level and Azure OpenAI paths; /v1/models; /health?model=;
/spend/logs by the answer's id; /routes; /global/spend/report; images and moderations (relayed and
through the litellm SDK); several models in one request."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import openai
import pytest

from .conftest import model_entry, relay_config
from .servers import Keystile

MASTER = {"Authorization": "Bearer sk-1234"}
PRICES = {"input_cost_per_token": 1e-3, "output_cost_per_token": 0.02}
CHAT_COST = 7 * 1e-3 + 2 * 0.02  # the fake upstream's 7 prompt tokens, "echo: hi" in 2 words
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module", params=["sqlite", "postgres+redis"])
def server(request, tmp_path_factory, upstream):
    cfg = relay_config(upstream)
    cfg["model_list"] += [
        model_entry(upstream, "priced", "echo-priced", model_info=PRICES),
        model_entry(upstream, "priced-pause", "pause", model_info=PRICES),  # answers after 0.1 s
        model_entry(upstream, "paused", "pause"),
        model_entry(upstream, "dall-e", "dall-e-3"),
        model_entry(upstream, "mod", "omni-moderation-latest"),
        # The same upstream through the litellm SDK (its litellm_proxy provider speaks OpenAI's API).
        {"model_name": "sdk-images", "litellm_params": {"model": "litellm_proxy/dall-e-3", "api_key": "upstream-secret",
                                                        "api_base": upstream.base_url}},
        {"model_name": "sdk-mod", "litellm_params": {"model": "litellm_proxy/omni-moderation-latest",
                                                     "api_key": "upstream-secret", "api_base": upstream.base_url}},
    ]
    env = {"KEYSTILE_MASTER_KEY": "sk-1234"}
    url = None
    if request.param == "postgres+redis":
        url = request.getfixturevalue("pg_url")
        env["REDIS_URL"] = request.getfixturevalue("redis_url")
    keystile = Keystile(tmp_path_factory.mktemp(f"litellm-routes-{request.param.replace('+', '-')}"), cfg,
                        env=env, database_url=url)
    keystile.master_key = "sk-1234"
    with keystile:
        yield keystile


@pytest.fixture(scope="module")
def proxy(server):
    with httpx.Client(base_url=server.url, timeout=15) as client:
        yield client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def chat(proxy: httpx.Client, key: str, model: str = "priced", path: str = "/chat/completions") -> httpx.Response:
    return proxy.post(path, json={"model": model, "messages": HI}, headers=bearer(key))


def new_key(proxy: httpx.Client, **fields) -> dict:
    r = proxy.post("/key/generate", headers=MASTER, json=fields)
    assert r.status_code == 200, r.text
    return r.json()


def eventually(fetch, what: str):
    """The spend writer works in batches: poll until `fetch()` is truthy."""
    deadline = time.monotonic() + 15
    while not (found := fetch()):
        assert time.monotonic() < deadline, f"no {what}"
        time.sleep(0.1)
    return found


# --- budgets -----------------------------------------------------------------------------------


def test_small_key_budget_admits_until_spent(proxy):
    # The example: a budget below the worst case of one request (no max_tokens: the model's
    # whole output at 0.02 a token) used to refuse the first request. LiteLLM admits it.
    key = new_key(proxy, max_budget=0.10)["key"]
    assert [chat(proxy, key).status_code for _ in range(3)] == [200, 200, 200]  # spent 0.047, 0.094, 0.141
    r = chat(proxy, key)
    err = r.json()["error"]
    assert r.status_code == 429 and err["code"] == "budget_exceeded" and "retry-after" not in r.headers
    assert err["message"].startswith("Budget has been exceeded! ")  # LiteLLM's words, then Keystile's
    assert f"spent {3 * CHAT_COST:.4f}" in err["message"] and "max_budget 0.1000" in err["message"]
    spend = eventually(lambda: (info := proxy.get("/key/info", params={"key": key}, headers=MASTER)
                                .json()["info"])["spend"] >= 3 * CHAT_COST - 1e-9 and info["spend"], "key spend")
    assert spend == pytest.approx(3 * CHAT_COST) and spend < 0.10 + CHAT_COST  # overshoot below one request's cost


def test_requests_in_flight_hold_the_budget(proxy, server):
    # Concurrent requests: the first is admitted and reserves its maximum cost, which fills the
    # budget until it settles; the others are refused meanwhile. Overshoot stays within one request.
    key = new_key(proxy, max_budget=0.10)["key"]

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=15) as client:
            answers = await asyncio.gather(*(client.post("/chat/completions", headers=bearer(key),
                                                          json={"model": "priced-pause", "messages": HI})
                                             for _ in range(5)))
        return sorted(a.status_code for a in answers)
    assert asyncio.run(burst()) == [200, 429, 429, 429, 429]
    assert chat(proxy, key, "priced-pause").status_code == 200  # settled at 0.047: room again


@pytest.mark.parametrize("owner", ["team", "user"])
def test_team_and_user_budgets_admit_the_same_way(proxy, owner):
    if owner == "team":
        team = proxy.post("/team/new", headers=MASTER, json={"max_budget": 0.05}).json()["team_id"]
        key = new_key(proxy, team_id=team)["key"]
    else:
        key = proxy.post("/user/new", headers=MASTER, json={"max_budget": 0.05}).json()["key"]
    assert [chat(proxy, key).status_code for _ in range(2)] == [200, 200]  # 0 and 0.047 are under 0.05
    r = chat(proxy, key)
    assert r.status_code == 429 and r.json()["error"]["message"].startswith("Budget has been exceeded! ")
    assert f"for {owner}:" in r.json()["error"]["message"]


# --- OpenAI routes at the root, Azure OpenAI paths, /v1/models ----------------------------------


def test_root_level_openai_routes_with_the_openai_sdk(server):
    key = httpx.post(server.url + "/key/generate", headers=MASTER, json={"aliases": {"my-echo": "echo"}}).json()["key"]
    client = openai.OpenAI(base_url=server.url, api_key=key, max_retries=0)  # no /v1, as LiteLLM's docs write it
    r = client.chat.completions.create(model="echo", messages=HI)
    assert r.choices[0].message.content == "echo: hi" and r.id.startswith("chatcmpl-")
    assert [c.choices[0].delta.content for c in client.chat.completions.create(model="echo", messages=HI, stream=True)
            if c.choices and c.choices[0].delta.content] == ["echo:", " hi"]
    assert client.completions.create(model="echo", prompt="hi").choices[0].text == "echo: hi"
    assert len(client.embeddings.create(model="echo", input=["a", "b"]).data) == 2
    names = [m.id for m in client.models.list()]
    assert "echo" in names and "priced" in names and "my-echo" not in names  # names, not a key's aliases
    assert names == [m["id"] for m in httpx.get(server.url + "/v1/models", headers=bearer(key)).json()["data"]]
    assert client.models.retrieve("my-echo").id == "my-echo"  # an alias still resolves


def test_azure_openai_client(server, upstream):
    key = httpx.post(server.url + "/key/generate", headers=MASTER, json={"models": ["echo"]}).json()["key"]
    client = openai.AzureOpenAI(api_key=key, azure_endpoint=server.url, api_version="2024-06-01", max_retries=0)
    r = client.chat.completions.create(model="echo", messages=HI)
    assert r.choices[0].message.content == "echo: hi"
    assert upstream.requests[-1]["model"] == "echo-upstream"
    chunks = client.chat.completions.create(model="echo", messages=HI, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: hi"
    assert client.completions.create(model="echo", prompt="hi").choices[0].text == "echo: hi"
    assert len(client.embeddings.create(model="echo", input="a").data) == 1
    # The deployment in the path is the model, whatever the body says.
    pinned = openai.AzureOpenAI(api_key=key, azure_endpoint=server.url, api_version="2024-06-01",
                                azure_deployment="echo", max_retries=0)
    assert pinned.chat.completions.create(model="gpt-4o", messages=HI).model == "echo"
    with pytest.raises(openai.PermissionDeniedError):  # the key's models still hold
        client.chat.completions.create(model="priced", messages=HI)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-deployment", messages=HI)
    r = httpx.post(server.url + "/openai/deployments/echo/chat/completions?api-version=2024-06-01",
                   headers={"api-key": key}, json={"messages": "not a list"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


# --- health ---------------------------------------------------------------------------------------


def test_health_of_one_model_and_readiness_version(proxy):
    body = proxy.get("/health", params={"model": "echo"}, headers=MASTER).json()
    entries = body["healthy_endpoints"] + body["unhealthy_endpoints"]
    assert [(e["model"], e["model_name"]) for e in entries] == [("openai/echo-upstream", "echo")]
    everything = proxy.get("/health", headers=MASTER).json()
    assert everything["healthy_count"] + everything["unhealthy_count"] > 1
    assert all("model" in e for e in everything["healthy_endpoints"] + everything["unhealthy_endpoints"])
    r = proxy.get("/health", params={"model": "no-such-model"}, headers=MASTER)
    assert r.status_code == 404 and "no-such-model" in r.json()["error"]["message"]
    assert proxy.get("/health", params={"model": ""}, headers=MASTER).status_code == 400
    ready = proxy.get("/health/readiness").json()
    assert ready["keystile_version"] == "0.1.0" and ready["litellm_version"].count(".") >= 2


# --- spend logs, routes, spend report ---------------------------------------------------------------


def test_spend_logs_of_a_stream_by_its_id(proxy, server):
    key = new_key(proxy)["key"]
    client = openai.OpenAI(base_url=server.url, api_key=key, max_retries=0)
    ids = {c.id for c in client.chat.completions.create(model="echo", messages=HI, stream=True)}
    [answer_id] = ids
    rows = eventually(lambda: proxy.get("/spend/logs", params={"request_id": answer_id}, headers=MASTER).json(),
                      "spend log row of the stream")
    assert [(r["request_id"], r["metadata"]["streamed"]) for r in rows] == [(answer_id, True)]
    assert proxy.get("/spend/logs", params={"request_id": "x" * 256}, headers=MASTER).status_code == 400


def test_routes(proxy):
    key = new_key(proxy)["key"]
    routes = proxy.get("/routes", headers=bearer(key)).json()["routes"]
    served = {(r["path"], m) for r in routes for m in r["methods"]}
    for path, method in [("/chat/completions", "POST"), ("/v1/chat/completions", "POST"), ("/models", "GET"),
                         ("/openai/deployments/{model}/chat/completions", "POST"), ("/key/generate", "POST"),
                         ("/v1/images/generations", "POST"), ("/moderations", "POST"), ("/routes", "GET")]:
        assert (path, method) in served
    assert all(r["name"] and r["endpoint"] for r in routes)
    assert proxy.get("/routes").status_code == 401


def test_global_spend_report(proxy):
    alias = f"prod-team-{uuid.uuid4().hex[:6]}"
    team = proxy.post("/team/new", headers=MASTER, json={"team_alias": alias}).json()["team_id"]
    user = f"reporter-{uuid.uuid4().hex[:6]}"
    key = new_key(proxy, team_id=team, user_id=user)
    assert chat(proxy, key["key"]).status_code == 200 and chat(proxy, key["key"], "echo").status_code == 200
    today = datetime.now(UTC).date()
    window = {"start_date": str(today - timedelta(days=1)), "end_date": str(today)}

    def team_row() -> dict | None:
        days = proxy.get("/global/spend/report", params=window, headers=MASTER).json()
        rows = [(d, t) for d in days for t in d["teams"] if t["team_name"] == alias]
        return rows[0] if rows and len(rows[0][1]["metadata"]) == 2 else None
    day, row = eventually(team_row, "team in the spend report")
    assert day["group_by_day"] == f"{today}T00:00:00+00:00"
    assert row["total_spend"] == pytest.approx(CHAT_COST)
    assert sorted((m["model"], m["api_key"], m["total_tokens"] > 0) for m in row["metadata"]) == [
        ("echo", key["token"], True), ("priced", key["token"], True)]

    [by_key] = proxy.get("/global/spend/report", params={**window, "api_key": key["key"]}, headers=MASTER).json()
    assert by_key["api_key"] == key["token"] and by_key["total_cost"] == pytest.approx(CHAT_COST)
    assert by_key["total_input_tokens"] == 14 and by_key["total_output_tokens"] == 4
    assert {m["model"] for m in by_key["model_details"]} == {"echo", "priced"}
    by_user = proxy.get("/global/spend/report", params={**window, "internal_user_id": user}, headers=MASTER).json()
    assert by_user == [by_key]
    assert proxy.get("/global/spend/report", params={"start_date": str(today + timedelta(days=1)),
                                                     "end_date": str(today + timedelta(days=2))},
                     headers=MASTER).json() == []
    for bad in ({"start_date": str(today)}, {**window, "group_by": "customer"}, {**window, "group_by": "model"},
                {"start_date": str(today), "end_date": str(today - timedelta(days=1))},
                {"start_date": "2024-13-01", "end_date": str(today)}, {"start_date": "99999-01-01", "end_date": "x"}):
        r = proxy.get("/global/spend/report", params=bad, headers=MASTER)
        assert r.status_code == 400, (bad, r.text)
    assert proxy.get("/global/spend/report", params=window, headers=bearer(key["key"])).status_code == 403


# --- images, moderations ---------------------------------------------------------------------------


@pytest.mark.parametrize("base, images, moderations", [("/v1", "dall-e", "mod"), ("", "sdk-images", "sdk-mod")])
def test_images_and_moderations(server, upstream, base, images, moderations):
    key = httpx.post(server.url + "/key/generate", headers=MASTER, json={}).json()["key"]
    client = openai.OpenAI(base_url=server.url + base, api_key=key, max_retries=0)
    made = client.images.generate(model=images, prompt="a red fox", n=2)
    assert [i.url for i in made.data] == ["https://images.example/a-red-fox.png"] * 2
    assert upstream.requests[-1]["model"] == "dall-e-3" and upstream.requests[-1]["prompt"] == "a red fox"
    if images == "dall-e":  # relayed as sent (litellm's image config keeps to gpt-image's parameters)
        assert client.images.generate(model=images, prompt="x", response_format="b64_json").data[0].b64_json
    checked = client.moderations.create(model=moderations, input=["I will kill the process", "hello"])
    assert [r.flagged for r in checked.results] == [True, False] and checked.results[0].categories.violence
    assert upstream.requests[-1]["model"] == "omni-moderation-latest"
    for path, body, param in [("/images/generations", {"prompt": "no model"}, "model"),
                              ("/images/generations", {"model": images, "prompt": 3}, "prompt"),
                              ("/moderations", {"model": moderations}, "input")]:
        r = httpx.post(server.url + base + path, json=body, headers=bearer(key))
        assert r.status_code == 400 and r.json()["error"]["param"] == param
    expected = sorted([base + "/images/generations"] * (2 if images == "dall-e" else 1) + [base + "/moderations"])

    def routes() -> list[str] | None:
        rows = httpx.get(server.url + "/spend/logs", params={"api_key": key}, headers=MASTER).json()
        found = sorted(r["metadata"]["route"] for r in rows if r["metadata"]["status"] == 200)
        return found if len(found) >= len(expected) else None
    assert eventually(routes, "spend rows") == expected


# --- several models in one request -----------------------------------------------------------------


def test_fastest_response_of_several_models(proxy, server):
    key = new_key(proxy)["key"]
    r = proxy.post("/chat/completions", headers=bearer(key),
                   json={"model": "paused, echo", "messages": HI, "fastest_response": True})
    assert r.status_code == 200 and r.json()["model"] == "echo"  # echo answers at once, paused after 0.1 s
    request_id = r.headers["x-request-id"]
    rows = eventually(lambda: [proxy.get("/spend/logs", params={"request_id": f"{request_id}-{i}"}, headers=MASTER)
                               .json() for i in (1, 2)] if all(
        proxy.get("/spend/logs", params={"request_id": f"{request_id}-{i}"}, headers=MASTER).json()
        for i in (1, 2)) else None, "both calls recorded")
    assert [(row[0]["model"], row[0]["metadata"]["status"]) for row in rows] == [("paused", 499), ("echo", 200)]

    client = openai.OpenAI(base_url=server.url, api_key=key, max_retries=0)
    chunks = client.chat.completions.create(model="paused,echo", messages=HI, stream=True,
                                            extra_body={"fastest_response": True})
    assert {c.model for c in chunks} == {"echo"}
    # Every model failing: the failure is the answer.
    r = proxy.post("/chat/completions", headers=bearer(key),
                   json={"model": "failing, badreq", "messages": HI, "fastest_response": True})
    assert r.status_code in (400, 502) and "error" in r.json()


def test_several_models_answer_a_list(proxy):
    key = new_key(proxy, models=["echo", "paused"])["key"]
    r = proxy.post("/v1/chat/completions", headers=bearer(key), json={"model": "paused, echo", "messages": HI})
    assert r.status_code == 200
    assert [a["model"] for a in r.json()] == ["paused", "echo"]  # every answer, in the order named
    r = proxy.post("/v1/chat/completions", headers=bearer(key), json={"model": "echo, priced", "messages": HI})
    first, refused = r.json()
    assert first["choices"][0]["message"]["content"] == "echo: hi"
    assert refused["error"]["code"] == "model_not_allowed"  # each model is checked against the key
    for body, param in [({"model": "echo, ", "messages": HI}, "model"),
                        ({"model": "echo, paused", "messages": HI, "stream": True}, "fastest_response"),
                        ({"model": "echo, paused", "messages": HI, "fastest_response": "yes"}, "fastest_response"),
                        ({"model": ",".join(["echo"] * 9), "messages": HI}, "model"),
                        ({"model": "echo, paused", "messages": []}, "messages")]:
        r = proxy.post("/v1/chat/completions", headers=bearer(key), json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (body, r.text)
