"""Team membership, self-service keys and organizations as a LiteLLM user's end-to-end suite calls
them: raw httpx against a live gateway with master key sk-1234, LiteLLM's documented bodies
(members_with_roles, /team/member_add|update|delete, max_budget_in_team, internal_user keys,
/organization/*), on SQLite and Postgres."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from .conftest import model_entry, relay_config
from .servers import Keystile

MASTER = {"Authorization": "Bearer sk-1234"}
PRICES = {"input_cost_per_token": 1e-3, "output_cost_per_token": 2e-3}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def proxy(request, tmp_path_factory, upstream):
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    config = relay_config(upstream)
    config["model_list"].append(model_entry(upstream, "priced", "echo-priced", model_info=PRICES))
    server = Keystile(tmp_path_factory.mktemp(f"teams-{request.param}"), config,
                      env={"KEYSTILE_MASTER_KEY": "sk-1234"}, database_url=url)
    server.master_key = "sk-1234"
    with server:
        with httpx.Client(base_url=server.url, timeout=15) as client:
            yield client


def as_key(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def chat(proxy: httpx.Client, key: str, model: str = "echo") -> httpx.Response:
    return proxy.post("/v1/chat/completions", headers=as_key(key),
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})


def ok(r: httpx.Response) -> dict:
    assert r.status_code == 200, r.text
    return r.json()


def refused(r: httpx.Response, status: int, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    if param is not None:
        assert error["param"] == param, error
    return error


def eventually(check, timeout: float = 5.0):
    """`check()` once it is truthy (spend is written in the background, changes spread within a second)."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.1)
    return result


def user_key(proxy: httpx.Client, **fields) -> dict:
    """A user made with /user/new (internal_user unless `user_role` says otherwise) and its key."""
    return ok(proxy.post("/user/new", headers=MASTER, json={"user_id": uid("u"), **fields}))


# --- team membership -----------------------------------------------------------------------------

def test_team_new_with_members_with_roles_and_user_info_teams(proxy):
    admin_id, email = uid("admin"), f"{uid('member')}@example.com"
    team = ok(proxy.post("/team/new", headers=MASTER, json={
        "team_alias": "my-new-team", "rpm_limit": 99, "max_budget": 10,
        "members_with_roles": [{"role": "admin", "user_id": admin_id}, {"role": "user", "user_email": email}]}))
    roles = {(m["role"], m["user_email"]) for m in team["members_with_roles"]}
    assert roles == {("admin", None), ("user", email)} and team["rpm_limit"] == 99
    by_email = next(m for m in team["members_with_roles"] if m["user_email"] == email)
    assert by_email["user_id"]  # a user made for the email, with a new id
    info = ok(proxy.get("/team/info", params={"team_id": team["team_id"]}, headers=MASTER))
    assert {m["user_id"] for m in info["team_memberships"]} == {admin_id, by_email["user_id"]}
    assert info["team_info"]["members_with_roles"] == team["members_with_roles"]
    user = ok(proxy.get("/user/info", params={"user_id": admin_id}, headers=MASTER))
    assert [t["team_id"] for t in user["teams"]] == [team["team_id"]]
    assert user["user_info"]["user_role"] == "internal_user"
    twice = [{"role": "user", "user_id": admin_id}, {"role": "admin", "user_id": admin_id}]
    count = ok(proxy.get("/team/list", headers=MASTER))["total_count"]
    refused(proxy.post("/team/new", headers=MASTER, json={"members_with_roles": twice}), 400, "members_with_roles")
    assert ok(proxy.get("/team/list", headers=MASTER))["total_count"] == count  # nothing was made
    listed = ok(proxy.get("/team/list", headers=MASTER, params={"size": 1000}))["teams"]
    assert next(t for t in listed if t["team_id"] == team["team_id"])["members_with_roles"] == team["members_with_roles"]


def test_member_add_update_delete(proxy):
    team = ok(proxy.post("/team/new", headers=MASTER, json={"team_alias": "members"}))
    tid = team["team_id"]
    a, b, c = uid("a"), uid("b"), uid("c")
    added = ok(proxy.post("/team/member_add", headers=MASTER, json={
        "team_id": tid, "member": {"role": "user", "user_id": a}, "max_budget_in_team": 2.5}))
    assert [m["user_id"] for m in added["members_with_roles"]] == [a] and added["team_id"] == tid
    assert added["updated_team_memberships"][0]["max_budget_in_team"] == 2.5
    assert added["updated_users"][0]["user_id"] == a
    many = ok(proxy.post("/team/member_add", headers=MASTER, json={
        "team_id": tid, "member": [{"role": "admin", "user_id": b}, {"role": "user", "user_id": c}]}))
    assert [m["user_id"] for m in many["members_with_roles"]] == [a, b, c]
    refused(proxy.post("/team/member_add", headers=MASTER, json={"team_id": tid, "member": {"user_id": a}}), 400,
            "member")
    updated = ok(proxy.post("/team/member_update", headers=MASTER, json={
        "team_id": tid, "user_id": c, "role": "admin", "max_budget_in_team": 1}))
    assert updated == {"team_id": tid, "user_id": c, "user_email": None, "role": "admin", "max_budget_in_team": 1.0}
    key = ok(proxy.post("/key/generate", headers=MASTER, json={"user_id": c, "team_id": tid}))["key"]
    assert chat(proxy, key).status_code == 200
    left = ok(proxy.post("/team/member_delete", headers=MASTER, json={"team_id": tid, "user_id": c}))
    assert [m["user_id"] for m in left["members_with_roles"]] == [a, b]
    assert chat(proxy, key).status_code == 401  # the member's keys of the team went with the membership
    refused(proxy.post("/team/member_delete", headers=MASTER, json={"team_id": tid, "user_id": c}), 404)
    refused(proxy.post("/team/member_update", headers=MASTER, json={"team_id": "no-such-team", "user_id": a}), 404)


@pytest.mark.parametrize("body, param", [
    ({"member": {"role": "user"}}, "member"),  # neither user_id nor user_email
    ({"member": {"role": "owner", "user_id": "x"}}, "member.0.role"),
    ({"member": {"user_id": "x"}, "max_budget_in_team": -1}, "max_budget_in_team"),
    ({"member": [{"user_id": "x", "team": "y"}]}, "member.0.team"),
    ({"member": {"user_id": "x\u0000"}}, "member.0.user_id"),
    ({"member": []}, "member"),
])
def test_member_add_refuses_bad_input(proxy, body, param):
    tid = ok(proxy.post("/team/new", headers=MASTER, json={}))["team_id"]
    error = refused(proxy.post("/team/member_add", headers=MASTER, json={"team_id": tid, **body}), 400)
    assert error["param"].startswith(param), error


def test_max_budget_in_team_is_enforced_per_member(proxy):
    tid = ok(proxy.post("/team/new", headers=MASTER, json={"max_budget": 100}))["team_id"]
    capped, free = uid("capped"), uid("free")
    ok(proxy.post("/team/member_add", headers=MASTER, json={"team_id": tid, "member": [{"user_id": capped},
                                                                                       {"user_id": free}]}))
    capped_key = ok(proxy.post("/key/generate", headers=MASTER, json={"user_id": capped, "team_id": tid}))["key"]
    free_key = ok(proxy.post("/key/generate", headers=MASTER, json={"user_id": free, "team_id": tid}))["key"]
    assert chat(proxy, capped_key, "priced").status_code == 200  # cached now, with no member budget
    ok(proxy.post("/team/member_update", headers=MASTER, json={"team_id": tid, "user_id": capped,
                                                              "max_budget_in_team": 0.02}))
    statuses = [chat(proxy, capped_key, "priced") for _ in range(12)]
    last = statuses[-1]
    assert last.status_code == 429 and "member:" in last.json()["error"]["message"], last.text
    assert last.json()["error"]["code"] == "budget_exceeded"
    assert chat(proxy, free_key, "priced").status_code == 200  # the team's other member is not capped

    def spent():
        memberships = ok(proxy.get("/team/info", params={"team_id": tid}, headers=MASTER))["team_memberships"]
        spend = {m["user_id"]: m["spend"] for m in memberships}
        return spend if spend[capped] >= 0.02 and spend[free] > 0 else None
    spend = eventually(spent)
    assert spend[capped] < 0.02 + 0.02  # overshoot bounded by one request's maximum cost


# --- self-service keys -----------------------------------------------------------------------------

def test_internal_user_creates_lists_reads_and_deletes_its_own_keys(proxy):
    user = user_key(proxy, models=["echo", "priced"], max_budget=1)
    me = as_key(user["key"])
    child = ok(proxy.post("/key/generate", headers=me, json={"key_alias": uid("mine"), "models": ["echo"]}))
    assert child["user_id"] == user["user_id"] and child["models"] == ["echo"] and child["max_budget"] == 1.0
    assert chat(proxy, child["key"]).status_code == 200
    assert chat(proxy, child["key"], "priced").status_code == 403  # the child's own models hold
    default = ok(proxy.post("/key/generate", headers=me, json={}))
    assert sorted(default["models"]) == ["echo", "priced"]  # absent: the caller's models
    listed = ok(proxy.get("/key/list", headers=me))
    assert sorted(listed["keys"]) == sorted([user["token"], child["token"], default["token"]])
    assert ok(proxy.get("/key/info", params={"key": child["key"]}, headers=me))["info"]["user_id"] == user["user_id"]
    assert ok(proxy.post("/key/delete", headers=me, json={"keys": [default["key"]]}))["deleted_keys"] == [
        default["token"]]
    assert chat(proxy, default["key"]).status_code == 401
    spend = ok(proxy.get("/spend/logs", headers=as_key(child["key"])))
    assert all(row["api_key"] == child["token"] for row in spend)


@pytest.mark.parametrize("body, param", [
    ({"models": ["echo", "failing"]}, "models"),
    ({"max_budget": 1.5}, "max_budget"),  # the user's budget is 1
    ({"user_id": "someone-else"}, "user_id"),
    ({"team_id": "some-team"}, "team_id"),
    ({"key_type": "management"}, "key_type"),
    ({"rpm_limit": 11}, "rpm_limit"),
    ({"duration": "2h"}, "expires"),
    ({"budget_duration": "1d"}, "budget_duration"),
])
def test_internal_user_cannot_create_a_key_with_more(proxy, body, param):
    user = user_key(proxy, models=["echo"], max_budget=1, rpm_limit=100, duration="1h", key_alias=uid("k"))
    own = user["key"]
    ok(proxy.post("/key/update", headers=MASTER, json={"key": own, "rpm_limit": 10, "max_budget": 0.5,
                                                       "budget_duration": "30d"}))
    before = ok(proxy.get("/key/list", headers=MASTER, params={"user_id": user["user_id"]}))["total_count"]
    error = refused(proxy.post("/key/generate", headers=as_key(own), json=body), 403, param)
    assert error["code"] == "self_serve_limit"
    assert ok(proxy.get("/key/list", headers=MASTER, params={"user_id": user["user_id"]}))["total_count"] == before


def test_a_self_served_key_inherits_the_callers_limits(proxy):
    user = user_key(proxy, models=["echo"], duration="1h")
    ok(proxy.post("/key/update", headers=MASTER, json={"key": user["key"], "rpm_limit": 10, "max_budget": 0.5,
                                                       "model_rpm_limit": {"echo": 5}}))
    child = ok(proxy.post("/key/generate", headers=as_key(user["key"]), json={}))
    assert child["rpm_limit"] == 10 and child["max_budget"] == 0.5 and child["model_rpm_limit"] == {"echo": 5}
    assert child["expires"] is not None and child["expires"] <= user["expires"]  # absent: the caller's expiry
    refused(proxy.post("/key/generate", headers=as_key(user["key"]), json={"model_rpm_limit": {"echo": 6}}), 403,
            "model_rpm_limit")


def test_internal_user_cannot_touch_other_users_or_escalate(proxy):
    mine, theirs = user_key(proxy), user_key(proxy)
    me = as_key(mine["key"])
    refused(proxy.get("/key/info", params={"key": theirs["key"]}, headers=me), 403)
    refused(proxy.get("/key/info", params={"key": "sk-no-such-key"}, headers=me), 404)
    refused(proxy.get("/key/list", params={"user_id": theirs["user_id"]}, headers=me), 403, "user_id")
    refused(proxy.post("/key/delete", headers=me, json={"keys": [theirs["key"], mine["key"]]}), 403)
    assert chat(proxy, theirs["key"]).status_code == 200 and chat(proxy, mine["key"]).status_code == 200
    refused(proxy.post("/key/update", headers=me, json={"key": mine["key"], "max_budget": 100}), 403)
    refused(proxy.post("/key/regenerate", headers=me, json={"key": theirs["key"]}), 403)
    refused(proxy.post("/user/update", headers=me, json={"user_id": mine["user_id"], "user_role": "proxy_admin"}), 403)
    refused(proxy.post("/user/new", headers=me, json={"user_role": "proxy_admin"}), 403)
    refused(proxy.post("/team/new", headers=me, json={}), 403)
    refused(proxy.get("/user/info", params={"user_id": theirs["user_id"]}, headers=me), 403)
    refused(proxy.get("/spend/logs", params={"user_id": theirs["user_id"]}, headers=me), 403)
    refused(proxy.get("/spend/logs", params={"api_key": theirs["key"]}, headers=me), 403)
    refused(proxy.get("/organization/list", headers=me), 403)
    assert ok(proxy.get("/user/info", params={"user_id": mine["user_id"]}, headers=me))["user_info"][
        "user_role"] == "internal_user"


def test_viewers_llm_api_keys_and_keys_without_a_user_cannot_self_serve(proxy):
    viewer = user_key(proxy, user_role="internal_user_viewer")
    refused(proxy.post("/key/generate", headers=as_key(viewer["key"]), json={}), 403)
    refused(proxy.get("/key/list", headers=as_key(viewer["key"])), 403)
    user = user_key(proxy, key_type="llm_api")
    refused(proxy.post("/key/generate", headers=as_key(user["key"]), json={}), 403)
    lone = ok(proxy.post("/key/generate", headers=MASTER, json={}))["key"]
    refused(proxy.post("/key/generate", headers=as_key(lone), json={}), 403)
    # a role change reaches cached keys: demoted to viewer, the key may no longer create keys
    user = user_key(proxy)
    ok(proxy.post("/key/generate", headers=as_key(user["key"]), json={}))
    ok(proxy.post("/user/update", headers=MASTER, json={"user_id": user["user_id"], "user_role": "internal_user_viewer"}))
    refused(proxy.post("/key/generate", headers=as_key(user["key"]), json={}), 403)


def test_team_admins_manage_their_teams_members_only(proxy):
    admin, member = uid("tadmin"), uid("tmember")
    team = ok(proxy.post("/team/new", headers=MASTER, json={"members_with_roles": [
        {"role": "admin", "user_id": admin}, {"role": "user", "user_id": member}]}))
    other = ok(proxy.post("/team/new", headers=MASTER, json={}))
    admin_key = as_key(ok(proxy.post("/key/generate", headers=MASTER, json={"user_id": admin}))["key"])
    member_key = as_key(ok(proxy.post("/key/generate", headers=MASTER, json={"user_id": member}))["key"])
    new = uid("new")
    ok(proxy.post("/team/member_add", headers=admin_key, json={"team_id": team["team_id"], "member": {"user_id": new},
                                                               "max_budget_in_team": 1}))
    ok(proxy.post("/team/member_update", headers=admin_key, json={"team_id": team["team_id"], "user_id": new,
                                                                  "max_budget_in_team": 2}))
    assert ok(proxy.get("/team/info", params={"team_id": team["team_id"]}, headers=admin_key))["team_id"] == team[
        "team_id"]
    refused(proxy.post("/team/member_add", headers=admin_key, json={"team_id": other["team_id"],
                                                                    "member": {"user_id": admin}}), 403)
    refused(proxy.post("/team/member_add", headers=admin_key, json={"team_id": "no-such-team",
                                                                    "member": {"user_id": admin}}), 403)
    refused(proxy.post("/team/member_add", headers=member_key, json={"team_id": team["team_id"],
                                                                     "member": {"user_id": uid("x")}}), 403)
    refused(proxy.post("/team/member_update", headers=member_key, json={"team_id": team["team_id"],
                                                                        "user_id": member, "role": "admin"}), 403)
    refused(proxy.post("/team/update", headers=admin_key, json={"team_id": team["team_id"], "max_budget": 1e6}), 403)
    refused(proxy.post("/user/update", headers=admin_key, json={"user_id": member, "user_role": "proxy_admin"}), 403)
    ok(proxy.post("/team/member_delete", headers=admin_key, json={"team_id": team["team_id"], "user_id": new}))


def test_team_admins_manage_their_teams_keys_within_the_team(proxy):
    admin, member, outsider = uid("kadmin"), uid("kmember"), uid("outsider")
    team = ok(proxy.post("/team/new", headers=MASTER, json={"models": ["echo"], "members_with_roles": [
        {"role": "admin", "user_id": admin}, {"role": "user", "user_id": member}]}))["team_id"]
    other_team = ok(proxy.post("/team/new", headers=MASTER, json={}))["team_id"]
    admin_key = as_key(ok(proxy.post("/key/generate", headers=MASTER, json={"user_id": admin}))["key"])
    member_key = as_key(ok(proxy.post("/key/generate", headers=MASTER, json={"user_id": member}))["key"])
    for_member = ok(proxy.post("/key/generate", headers=admin_key, json={"team_id": team, "user_id": member}))
    service = ok(proxy.post("/key/generate", headers=admin_key, json={"team_id": team, "models": ["failing"]}))
    assert for_member["team_id"] == team and for_member["user_id"] == member and service["user_id"] is None
    assert chat(proxy, for_member["key"]).status_code == 200
    assert chat(proxy, service["key"], "failing").status_code == 403  # the team's models hold
    refused(proxy.post("/key/generate", headers=admin_key, json={"team_id": team, "user_id": outsider}), 403,
            "user_id")
    refused(proxy.post("/key/generate", headers=admin_key, json={"team_id": other_team}), 403, "team_id")
    refused(proxy.post("/key/generate", headers=admin_key, json={"team_id": team, "key_type": "management"}), 403,
            "key_type")
    refused(proxy.post("/key/generate", headers=member_key, json={"team_id": team}), 403, "team_id")
    listed = ok(proxy.get("/key/list", headers=admin_key, params={"team_id": team}))["keys"]
    assert sorted(listed) == sorted([for_member["token"], service["token"]])
    refused(proxy.get("/key/list", headers=member_key, params={"team_id": team, "user_id": admin}), 403)
    assert ok(proxy.get("/key/info", headers=admin_key, params={"key": for_member["key"]}))["info"]["team_id"] == team
    refused(proxy.get("/key/info", headers=member_key, params={"key": service["key"]}), 403)
    refused(proxy.post("/key/delete", headers=member_key, json={"keys": [service["key"]]}), 403)
    ok(proxy.post("/key/delete", headers=admin_key, json={"keys": [service["key"], for_member["key"]]}))
    assert chat(proxy, for_member["key"]).status_code == 401


# --- organizations ---------------------------------------------------------------------------------

def test_organization_crud_in_litellm_shapes(proxy):
    org = ok(proxy.post("/organization/new", headers=MASTER, json={
        "organization_alias": "marketing_department", "models": ["echo"], "max_budget": 20}))
    oid = org["organization_id"]
    assert org["organization_alias"] == "marketing_department" and org["models"] == ["echo"]
    assert org["max_budget"] == 20 and org["spend"] == 0 and org["created_at"]
    info = ok(proxy.get("/organization/info", params={"organization_id": oid}, headers=MASTER))
    assert info["organization_id"] == oid and info["teams"] == []
    assert oid in [o["organization_id"] for o in ok(proxy.get("/organization/list", headers=MASTER))]
    patched = ok(proxy.patch("/organization/update", headers=MASTER, json={"organization_id": oid,
                                                                          "max_budget": 30}))
    assert patched["max_budget"] == 30 and patched["models"] == ["echo"]
    team = ok(proxy.post("/team/new", headers=MASTER, json={"organization_id": oid, "team_alias": "in-org"}))
    assert team["organization_id"] == oid
    info = ok(proxy.get("/organization/info", params={"organization_id": oid}, headers=MASTER))
    assert [t["team_id"] for t in info["teams"]] == [team["team_id"]]
    refused(proxy.request("DELETE", "/organization/delete", headers=MASTER, json={"organization_ids": [oid]}), 409)
    ok(proxy.post("/team/delete", headers=MASTER, json={"team_ids": [team["team_id"]]}))
    deleted = ok(proxy.request("DELETE", "/organization/delete", headers=MASTER, json={"organization_ids": [oid]}))
    assert [o["organization_id"] for o in deleted] == [oid]
    refused(proxy.get("/organization/info", params={"organization_id": oid}, headers=MASTER), 404)
    refused(proxy.post("/organization/new", headers=MASTER, json={"organization_alias": "x", "budget_id": "b"}), 400,
            "budget_id")


def test_a_teams_models_and_budget_fit_within_its_organization(proxy):
    oid = ok(proxy.post("/organization/new", headers=MASTER, json={"models": ["echo"], "max_budget": 20}))[
        "organization_id"]
    refused(proxy.post("/team/new", headers=MASTER, json={"organization_id": oid, "models": ["echo", "failing"]}),
            400, "models")
    refused(proxy.post("/team/new", headers=MASTER, json={"organization_id": oid, "max_budget": 21}), 400,
            "max_budget")
    refused(proxy.post("/team/new", headers=MASTER, json={"organization_id": "no-such-org"}), 400, "organization_id")
    tid = ok(proxy.post("/team/new", headers=MASTER, json={"organization_id": oid, "max_budget": 20}))["team_id"]
    refused(proxy.post("/team/update", headers=MASTER, json={"team_id": tid, "models": ["failing"]}), 400, "models")
    key = ok(proxy.post("/key/generate", headers=MASTER, json={"team_id": tid}))["key"]
    assert chat(proxy, key).status_code == 200
    assert chat(proxy, key, "failing").status_code == 403  # the team lists no models: the organization's hold
    ok(proxy.post("/organization/update", headers=MASTER, json={"organization_id": oid, "max_budget": 0}))
    r = eventually(lambda: (r := chat(proxy, key)).status_code == 429 and r)
    assert f"org:{oid}" in r.json()["error"]["message"]
    ok(proxy.post("/organization/update", headers=MASTER, json={"organization_id": oid, "blocked": True,
                                                                "max_budget": 20}))
    r = eventually(lambda: (r := chat(proxy, key)).status_code == 403 and r)
    assert "organization is blocked" in r.json()["error"]["message"]


def test_organization_spend_accrues_from_its_teams(proxy):
    oid = ok(proxy.post("/organization/new", headers=MASTER, json={}))["organization_id"]
    tid = ok(proxy.post("/team/new", headers=MASTER, json={"organization_id": oid}))["team_id"]
    key = ok(proxy.post("/key/generate", headers=MASTER, json={"team_id": tid}))["key"]
    assert chat(proxy, key, "priced").status_code == 200
    org = eventually(lambda: (o := ok(proxy.get("/organization/info", params={"organization_id": oid},
                                                headers=MASTER)))["spend"] > 0 and o)
    assert org["teams"][0]["spend"] == pytest.approx(org["spend"])
