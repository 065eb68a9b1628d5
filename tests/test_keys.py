"""Virtual keys, teams and users through the admin API of a live server, on SQLite and on the real
PostgreSQL; the cache's invalidation within one process and across two sharing Postgres and Redis."""

from __future__ import annotations

import subprocess
import time

import httpx
import openai
import pytest

from .conftest import relay_config
from .servers import Keystile

CHAT = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}


class Admin:
    """Admin calls and chats against a server; `source` picks the client address (any of 127/8)."""

    def __init__(self, server: Keystile, source: str | None = None):
        self.s = server
        self.h = {"Authorization": f"Bearer {server.master_key}"}
        self.transport = httpx.HTTPTransport(local_address=source) if source else None

    def post(self, path: str, body: dict, key: str | None = None) -> httpx.Response:
        h = {"Authorization": f"Bearer {key}"} if key else self.h
        with httpx.Client(transport=self.transport, timeout=10) as client:
            return client.post(self.s.url + path, json=body, headers=h)

    def get(self, path: str, as_key: str | None = None, **params) -> httpx.Response:
        h = {"Authorization": f"Bearer {as_key}"} if as_key else self.h
        return httpx.get(self.s.url + path, params=params, headers=h, timeout=10)

    def ok(self, path: str, body: dict) -> dict:
        r = self.post(path, body)
        assert r.status_code == 200, r.text
        return r.json()

    def chat(self, key: str, model: str = "echo") -> int:
        return self.post("/v1/chat/completions", {**CHAT, "model": model}, key=key).status_code


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(request, tmp_path_factory, upstream):
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    with Keystile(tmp_path_factory.mktemp(request.param), relay_config(upstream), database_url=url) as s:
        s.db_kind = request.param
        yield s


@pytest.fixture
def admin(server) -> Admin:
    return Admin(server)


def _dump_database(server: Keystile) -> str:
    url = server.env["DATABASE_URL"]
    if server.db_kind == "postgres":
        db = url.rsplit("/", 1)[1]
        return subprocess.run(["pg_dump", "-h", "127.0.0.1", "-U", "postgres", "--data-only", db],
                              capture_output=True, text=True, check=True).stdout
    path = url.split("///", 1)[1]
    return subprocess.run(["python3", "-c", f"import sqlite3; c=sqlite3.connect('{path}'); "
                           "print('\\n'.join(c.iterdump()))"], capture_output=True, text=True, check=True).stdout


def test_key_lifecycle(admin, server):
    created = admin.ok("/key/generate", {"key_alias": f"life-{server.db_kind}", "models": ["echo"],
                                         "rpm_limit": 60, "max_budget": 10, "budget_duration": "30d",
                                         "duration": "90d", "metadata": {"owner": "ci"}})
    key = created["key"]
    assert key.startswith("sk-") and len(key) >= 3 + 43
    assert created["key_name"] == f"sk-...{key[-4:]}" and created["budget_reset_at"] and created["expires"]
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
    assert client.chat.completions.create(**CHAT).choices[0].message.content == "echo: hi"
    assert [m.id for m in client.models.list()] == ["echo"]
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(**{**CHAT, "model": "failing"})

    # A key reads its own info without admin rights; the raw key is not in it.
    info = admin.get("/key/info", as_key=key)
    assert info.status_code == 200 and key not in info.text and info.json()["info"]["metadata"] == {"owner": "ci"}

    admin.ok("/key/update", {"key": key, "models": ["echo", "failing"]})
    assert admin.chat(key, "failing") == 502  # allowed now; the upstream itself fails

    admin.ok("/key/block", {"key": key})
    assert admin.chat(key) == 403
    admin.ok("/key/unblock", {"key": created["token"]})
    assert admin.chat(key) == 200

    rotated = admin.ok("/key/regenerate", {"key": key})
    assert admin.chat(key) == 401 and admin.chat(rotated["key"]) == 200
    graced = admin.ok("/key/regenerate", {"key": rotated["key"], "grace_period": "1h"})
    assert admin.chat(rotated["key"]) == 200 and admin.chat(graced["key"]) == 200

    deleted = admin.ok("/key/delete", {"key_aliases": [f"life-{server.db_kind}"]})
    assert deleted["deleted_keys"] == [graced["token"]]
    assert admin.chat(graced["key"]) == 401 and admin.chat(rotated["key"]) == 401

    # Only hashes are stored, and nothing logs a raw key.
    live = admin.ok("/key/generate", {})
    dump, logs = _dump_database(server), server.logs()
    assert live["token"] in dump
    for raw in (key, rotated["key"], graced["key"], live["key"]):
        assert raw not in dump and raw not in logs


def test_validation_and_conflicts(admin, server):
    r = admin.post("/key/generate", {"key_alias": "x", "bogus_field": 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "bogus_field"
    alias = f"dup-{server.db_kind}"
    admin.ok("/key/generate", {"key_alias": alias})
    r = admin.post("/key/generate", {"key_alias": alias})
    assert r.status_code == 409
    for field in ("budget_duration", "duration"):
        r = admin.post("/key/generate", {field: "soon"})
        assert r.status_code == 400 and r.json()["error"]["param"] == field and "invalid duration" in r.text
    assert admin.post("/key/generate", {"rpm_limit": -1}).status_code == 400
    assert admin.post("/key/generate", {"team_id": "no-such-team"}).status_code == 400
    assert admin.post("/key/update", {"key": "sk-nope", "rpm_limit": 1}).status_code == 404
    assert admin.post("/key/delete", {"keys": ["sk-nope"]}).status_code == 404


def test_expiry(admin):
    past = admin.ok("/key/generate", {"expires": "2020-01-01T00:00:00Z"})["key"]
    r = admin.post("/v1/chat/completions", CHAT, key=past)
    assert r.status_code == 401 and r.json()["error"]["code"] == "key_expired"
    soon = admin.ok("/key/generate", {"duration": "1s"})["key"]
    assert admin.chat(soon) == 200
    time.sleep(1.2)
    assert admin.chat(soon) == 401


def test_key_aliases_and_models_listing(admin, server):
    key = admin.ok("/key/generate", {"models": ["echo"], "aliases": {"my-model": "echo"}})["key"]
    r = admin.post("/v1/chat/completions", {**CHAT, "model": "my-model"}, key=key)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "echo: hi"
    ids = [m["id"] for m in admin.get("/v1/models", as_key=key).json()["data"]]
    assert ids == ["echo"]  # model names only: LiteLLM does not list a key's aliases either
    assert admin.get("/v1/models/my-model", as_key=key).json()["id"] == "my-model"  # but an alias resolves


def test_key_types(admin):
    llm = admin.ok("/key/generate", {"key_type": "llm_api"})["key"]
    mgmt_user = admin.ok("/user/new", {"user_role": "proxy_admin", "auto_create_key": False})["user_id"]
    mgmt = admin.ok("/key/generate", {"key_type": "management", "user_id": mgmt_user})["key"]
    plain = admin.ok("/key/generate", {})["key"]
    assert admin.chat(llm) == 200
    assert admin.post("/key/generate", {}, key=llm).status_code == 403
    assert admin.post("/key/generate", {}, key=plain).status_code == 403  # not an admin user
    assert admin.chat(mgmt) == 403
    assert admin.post("/key/generate", {}, key=mgmt).status_code == 200
    other = admin.ok("/key/generate", {})["token"]
    assert admin.get("/key/info", as_key=plain, key=other).status_code == 403


def test_teams_and_users_tightest_wins(admin, server):
    team = admin.ok("/team/new", {"team_alias": f"ml-{server.db_kind}", "models": ["echo", "slow"]})
    user = admin.ok("/user/new", {"team_id": team["team_id"], "models": ["echo", "failing"]})
    assert user["key"].startswith("sk-")  # LiteLLM's /user/new creates a key by default
    key = admin.ok("/key/generate", {"user_id": user["user_id"], "team_id": team["team_id"]})["key"]
    assert admin.chat(key) == 200
    assert admin.chat(key, "failing") == 403 and admin.chat(key, "slow") == 403  # not in both lists

    admin.ok("/team/update", {"team_id": team["team_id"], "blocked": True})
    assert admin.chat(key) == 403
    admin.ok("/team/update", {"team_id": team["team_id"], "blocked": False})
    assert admin.chat(key) == 200

    info = admin.get("/team/info", team_id=team["team_id"]).json()
    assert info["team_info"]["team_alias"] == f"ml-{server.db_kind}" and len(info["keys"]) == 2
    assert admin.get("/user/info", user_id=user["user_id"]).json()["user_info"]["team_id"] == team["team_id"]
    listed = admin.get("/team/list", page=1, size=1).json()
    assert listed["current_page"] == 1 and len(listed["teams"]) == 1 and listed["total_count"] >= 1
    assert admin.post("/team/new", {"team_alias": f"ml-{server.db_kind}"}).status_code == 200  # as in LiteLLM
    assert admin.post("/team/new", {"team_id": team["team_id"]}).status_code == 409

    admin.ok("/user/delete", {"user_ids": [user["user_id"]]})
    assert admin.chat(key) == 401 and admin.chat(user["key"]) == 401  # a user's keys go with it
    admin.ok("/team/delete", {"team_ids": [team["team_id"]]})
    assert admin.get("/team/info", team_id=team["team_id"]).status_code == 404


def test_key_list_pagination_and_filters(admin, server):
    team = admin.ok("/team/new", {})["team_id"]
    tokens = {admin.ok("/key/generate", {"team_id": team})["token"] for _ in range(3)}
    page1 = admin.get("/key/list", team_id=team, size=2, page=1).json()
    page2 = admin.get("/key/list", team_id=team, size=2, page=2).json()
    assert page1["total_count"] == 3 and page1["total_pages"] == 2
    assert set(page1["keys"]) | set(page2["keys"]) == tokens
    full = admin.get("/key/list", team_id=team, return_full_object="true").json()["keys"]
    assert all(k["team_id"] == team and "key" not in k for k in full)
    assert admin.get("/key/list", page=0).status_code == 400


def wait_for(check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_failed_auth_is_throttled_per_address(tmp_path, upstream):
    config = relay_config(upstream, auth_failures_per_minute=5)
    with Keystile(tmp_path, config) as s:
        a = Admin(s)
        used, fresh = a.ok("/key/generate", {})["key"], a.ok("/key/generate", {})["key"]
        assert a.chat(used) == 200
        codes = [a.chat(f"sk-wrong-{i}") for i in range(8)]
        assert codes[:5] == [401] * 5 and set(codes[5:]) == {429}
        r = a.post("/v1/chat/completions", CHAT, key="sk-wrong-x")
        assert int(r.headers["retry-after"]) >= 1
        # The throttle comes before any comparison: from a throttled address the right master key
        # gets the same 429 as a wrong guess (it used to get 200, telling a guesser when it was right).
        assert a.chat(s.master_key) == 429
        assert a.chat(s.master_key + "x") == 429
        # Keys that exist are no guesses (256 random bits): a used one, and a fresh one as soon as
        # the change feed has told this process it exists (at once at start, within a second later).
        assert a.chat(used) == 200
        wait_for(lambda: a.chat(fresh) == 200, 1.5)
        # Deleted (by the operator, from another address), the known key is refused (and, refused
        # once, it is throttled like a guess).
        Admin(s, source="127.0.0.2").ok("/key/delete", {"keys": [used]})
        assert a.chat(used) == 401
        assert a.chat(used) == 429


def test_throttle_stays_fair_after_a_restart(tmp_path, upstream):
    """After a restart no key has been used in this process yet: 30 bad requests from one address
    (everyone behind one proxy) used to lock every key out for 60 s."""
    config = relay_config(upstream)
    url = f"sqlite+aiosqlite:///{tmp_path}/shared.db"
    with Keystile(tmp_path, config, database_url=url) as first:
        key = Admin(first).ok("/key/generate", {})["key"]
    with Keystile(tmp_path, config, database_url=url) as s:
        a = Admin(s)
        assert [a.chat(f"sk-guess-{i}") for i in range(31)][-1] == 429  # the default: 30 a minute
        assert a.chat(key) == 200  # never used since the restart, still not locked out
        assert a.chat("sk-" + "A" * 43) == 429  # a well-formed guess: no lookup, no answer
        assert a.chat(s.master_key) == 429


def test_blocked_key_stops_on_a_second_gateway_within_a_second(tmp_path, upstream, pg_url, redis_url):
    config = relay_config(upstream)
    env = {"REDIS_URL": redis_url}
    with Keystile(tmp_path, config, database_url=pg_url, env=env) as a, \
            Keystile(tmp_path, config, database_url=pg_url, env=env) as b:
        b.master_key = a.master_key = a.master_key  # same operator
        admin_a = Admin(a)
        key = admin_a.ok("/key/generate", {})["key"]
        gateway_b = Admin(b)
        assert gateway_b.chat(key) == 200  # now cached in b
        admin_a.ok("/key/block", {"key": key})
        start = time.monotonic()
        while gateway_b.chat(key) != 403:
            assert time.monotonic() - start < 1.0, "blocked key still accepted by the second gateway"
            time.sleep(0.02)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_revocation_reaches_a_second_gateway_within_a_second_without_redis(tmp_path, upstream, kind, request):
    """Two gateways share a database and no Redis. A key cached in the second one used to be
    served from its stale entry once or twice more after an idle gap; now the change feed drops it
    within a second, for a block, a delete, an expiry, a blocked user, a member's budget in a team
    and a blocked organization alike."""
    from datetime import UTC, datetime, timedelta

    url = request.getfixturevalue("pg_url") if kind == "postgres" else f"sqlite+aiosqlite:///{tmp_path}/shared.db"
    config = relay_config(upstream)
    with Keystile(tmp_path, config, database_url=url) as a, Keystile(tmp_path, config, database_url=url) as b:
        admin, other = Admin(a), Admin(b)
        user = f"revoked-{kind}-{time.time_ns()}"
        admin.ok("/user/new", {"user_id": user, "auto_create_key": False})
        team = admin.ok("/team/new", {"members_with_roles": [{"role": "user", "user_id": user}]})["team_id"]
        org = admin.ok("/organization/new", {})["organization_id"]
        org_team = admin.ok("/team/new", {"organization_id": org})["team_id"]
        keys = [admin.ok("/key/generate", {})["key"] for _ in range(3)] + \
            [admin.ok("/key/generate", {"user_id": user})["key"],
             admin.ok("/key/generate", {"user_id": user, "team_id": team})["key"],
             admin.ok("/key/generate", {"team_id": org_team})["key"]]
        assert [other.chat(k) for k in keys] == [200] * 6  # now cached in the second gateway
        time.sleep(2.5)  # an idle gap: the old cache served its stale entry while reloading after one
        blocked, deleted, expired, users, member, in_org = keys
        admin.ok("/team/member_update", {"team_id": team, "user_id": user, "max_budget_in_team": 0})
        admin.ok("/organization/update", {"organization_id": org, "blocked": True})
        time.sleep(1.0)
        assert [other.chat(k) for k in (member, in_org)] == [429, 403]
        admin.ok("/key/block", {"key": blocked})
        admin.ok("/key/delete", {"keys": [deleted]})
        admin.ok("/key/update", {"key": expired, "expires": (datetime.now(UTC) - timedelta(seconds=1)).isoformat()})
        admin.ok("/user/update", {"user_id": user, "blocked": True})
        time.sleep(1.0)
        assert [other.chat(k) for k in keys[:4]] == [403, 401, 401, 403]
        admin.ok("/key/unblock", {"key": blocked})
        time.sleep(1.0)
        assert other.chat(blocked) == 200


def test_a_rotated_secret_stops_at_the_end_of_its_grace_period_though_cached(admin):
    old = admin.ok("/key/generate", {})["key"]
    assert admin.chat(old) == 200
    new = admin.ok("/key/regenerate", {"key": old, "grace_period": "2s"})["key"]
    assert admin.chat(old) == 200 and admin.chat(new) == 200  # the old secret is cached again now
    time.sleep(2.1)
    assert admin.chat(old) == 401 and admin.chat(new) == 200


def test_delete_accepts_a_key_named_twice_and_times_carry_their_offset(admin, server):
    made = admin.ok("/key/generate", {"key_alias": f"twice-{server.db_kind}"})
    info = admin.get("/key/info", key=made["token"]).json()["info"]
    assert info["created_at"].endswith("+00:00") and info["updated_at"].endswith("+00:00")
    r = admin.post("/key/delete", {"keys": [made["key"], made["token"]], "key_aliases": [f"twice-{server.db_kind}"]})
    assert r.status_code == 200 and r.json()["deleted_keys"] == [made["token"]]
    assert admin.get("/key/list", size=0).json()["error"]["param"] == "size"


def test_last_used_time_is_kept(admin):
    made = admin.ok("/key/generate", {})
    assert made["last_used_at"] is None
    assert admin.chat(made["key"]) == 200
    deadline = time.monotonic() + 5
    while (info := admin.get("/key/info", key=made["token"]).json()["info"])["last_used_at"] is None:
        assert time.monotonic() < deadline, "last_used_at never set"
        time.sleep(0.1)
    assert info["last_used_at"] >= made["created_at"]
