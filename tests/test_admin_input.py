"""The admin API described and guarded: /openapi.json names every admin route's body, answer and
errors; input that does not fit (huge pages and numbers, dates that leave the calendar, durations
of a billion days, deep metadata, over-long or NUL-bearing text) is a 400 naming the field, on
SQLite and Postgres, and nothing of a refused request is written."""

from __future__ import annotations

import httpx
import pytest

from .test_keys import Admin, admin, server  # noqa: F401  (fixtures: a live server on SQLite and on Postgres)

ADMIN_PREFIXES = ("/key/", "/team/", "/user/", "/spend/", "/global/", "/health", "/model/", "/v2/model/", "/model_group/")
BIG = 10**20


def _routes(spec: dict):
    for path, item in spec["paths"].items():
        if path.startswith(ADMIN_PREFIXES):
            for method, op in item.items():
                yield path, method, op


def _resolve(spec: dict, schema: dict) -> dict:
    ref = schema.get("$ref")
    return spec["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else schema


def test_openapi_describes_every_admin_route(server):
    spec = httpx.get(server.url + "/openapi.json").json()
    routes = list(_routes(spec))
    assert len(routes) >= 25
    for path, method, op in routes:
        ok = op["responses"]["200"]["content"]["application/json"]["schema"]
        for shape in ok.get("anyOf", [ok]):  # /spend/logs: LiteLLM's list of rows or Keystile's pages
            shape = _resolve(spec, shape.get("items", shape))
            assert shape.get("properties"), f"{method} {path}: 200 answer not described"
        if method == "post":
            body = op["requestBody"]["content"]["application/json"]["schema"]
            body = _resolve(spec, body.get("anyOf", [body])[0])
            assert body.get("properties") and body.get("additionalProperties") is False, f"{method} {path}"
        if not path.startswith("/health"):
            assert {"400", "401", "403", "429"} <= set(op["responses"]), f"{method} {path}: errors not declared"
            error = op["responses"]["400"]["content"]["application/json"]["schema"]
            assert _resolve(spec, error)["required"] == ["error"]
        assert "422" not in op["responses"], f"{method} {path}: 422 is never answered"
    key_gen = spec["paths"]["/key/generate"]["post"]
    assert "409" in key_gen["responses"]
    new_key = _resolve(spec, key_gen["responses"]["200"]["content"]["application/json"]["schema"])
    assert {"key", "token", "key_name", "expires", "metadata"} <= set(new_key["properties"])


def test_405_names_the_allowed_methods(server):
    r = httpx.get(server.url + "/key/generate")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.json()["error"]["code"] == "method_not_allowed"
    r = httpx.delete(server.url + "/v1/chat/completions")
    assert r.status_code == 405 and r.headers["allow"] == "POST"


def test_unknown_fields_are_all_named(admin):
    r = admin.post("/key/generate", {"key_alias": "x", "bogus": 1, "other": 2})
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "bogus" and "bogus" in err["message"] and "other" in err["message"]


def test_body_errors_keep_their_messages(admin, server):
    h = {**admin.h, "Content-Type": "application/json"}
    r = httpx.post(server.url + "/key/generate", content=b'{"key_alias": ', headers=h)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(server.url + "/key/generate", content=b"[1]", headers=h)
    assert r.status_code == 400 and "JSON object" in r.json()["error"]["message"]
    r = httpx.post(server.url + "/key/generate", content=b"", headers=h)
    assert r.status_code == 400 and "empty" in r.json()["error"]["message"]
    r = httpx.post(server.url + "/key/generate", content=b'{"metadata": {"a": "' + b"x" * (1 << 20) + b'"}}', headers=h)
    assert r.status_code == 413
    r = httpx.post(server.url + "/key/generate", content=b'{"max_budget": 1e400}', headers=h)
    assert r.status_code == 400


def _nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"a": value}
    return value


BAD_BODIES = [
    ("/key/generate", {"rpm_limit": 2**31}, "rpm_limit"),
    ("/key/generate", {"tpm_limit": 2**63}, "tpm_limit"),
    ("/key/generate", {"max_parallel_requests": 2**64}, "max_parallel_requests"),
    ("/key/generate", {"model_rpm_limit": {"echo": 2**31}}, "model_rpm_limit.echo"),
    ("/key/generate", {"duration": "999999999999d"}, "duration"),
    ("/key/generate", {"budget_duration": "999999999999d"}, "budget_duration"),
    ("/key/generate", {"budget_duration": "00000000000000000001d"}, "budget_duration"),
    ("/key/generate", {"max_budget": 1e300}, "max_budget"),
    ("/key/generate", {"expires": "0001-01-01T00:00:00+00:01"}, "expires"),
    ("/key/generate", {"key_alias": "a\x00b"}, "key_alias"),
    ("/key/generate", {"key_alias": "k" * 256}, "key_alias"),
    ("/key/generate", {"models": ["ec\x00ho"]}, "models.0"),
    ("/key/generate", {"metadata": {"note": "nul\x00"}}, "metadata"),
    ("/key/generate", {"user_id": "u" * 65}, "user_id"),
    ("/key/regenerate", {"key": "sk-x", "grace_period": "999999999999d"}, "grace_period"),
    ("/team/new", {"team_alias": "ml\x00team"}, "team_alias"),
    ("/team/new", {"budget_duration": "999999999999d"}, "budget_duration"),
    ("/team/new", {"rpm_limit": 2**31}, "rpm_limit"),
    ("/user/new", {"user_email": "e" * 990 + "@example.com"}, "user_email"),
    ("/user/new", {"user_id": "bob\x00"}, "user_id"),
    ("/user/update", {"user_id": "nobody", "tpm_limit": 2**40}, "tpm_limit"),
]


@pytest.mark.parametrize("path, body, param", BAD_BODIES, ids=[f"{p}:{b}"[:60] for p, b, _ in BAD_BODIES])
def test_bad_bodies_are_400_naming_the_field(admin, path, body, param):
    r = admin.post(path, body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_deep_metadata_is_refused_before_anything_is_written(admin, server):
    alias = f"deep-{server.db_kind}"
    r = admin.post("/key/generate", {"key_alias": alias, "metadata": _nested(500)})
    assert r.status_code == 400 and r.json()["error"]["param"] == "metadata"
    assert admin.get("/key/list", key_alias=alias).json()["total_count"] == 0
    r = admin.post("/user/new", {"metadata": _nested(17)})
    assert r.status_code == 400 and "16 levels" in r.json()["error"]["message"]
    made = admin.ok("/key/generate", {"key_alias": alias, "metadata": _nested(15)})
    assert made["key"].startswith("sk-") and made["metadata"] == _nested(15)


BAD_QUERIES = [
    ("/spend/logs", {"page": BIG}, "page"),
    ("/key/list", {"page": BIG}, "page"),
    ("/user/list", {"page": BIG}, "page"),
    ("/team/list", {"page": BIG}, "page"),
    ("/key/list", {"size": 0}, "size"),
    ("/spend/logs", {"start_date": "0001-01-01T00:00:00+00:01"}, "start_date"),
    ("/spend/logs", {"end_date": "9999-12-31T23:59:59-00:01"}, "end_date"),
    ("/global/spend", {"start_date": "0001-01-01T00:00:00+00:01"}, "start_date"),
    ("/global/spend", {"end_date": "0001-01-01T00:00:00+00:01"}, "end_date"),
    ("/spend/report", {"since": "999999999999d"}, "since"),
    ("/spend/logs", {"model": "a\x00b"}, "model"),
    ("/spend/logs", {"user_id": "u\x00"}, "user_id"),
    ("/user/info", {"user_id": "u\x00"}, "user_id"),
    ("/team/info", {"team_id": "t" * 65}, "team_id"),
    ("/key/info", {"key": "k\x00"}, "key"),
    ("/user/list", {"user_role": "emperor"}, "user_role"),
]


@pytest.mark.parametrize("path, params, param", BAD_QUERIES, ids=[f"{p}:{q}"[:60] for p, q, _ in BAD_QUERIES])
def test_bad_queries_are_400_naming_the_field(admin, path, params, param):
    r = admin.get(path, **params)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_values_at_the_bounds_are_stored(admin, server):
    made = admin.ok("/key/generate", {"rpm_limit": 2**31 - 1, "budget_duration": "36500d",
                                      "expires": "9999-12-31T00:00:00+00:00"})
    info = admin.get("/key/info", key=made["token"]).json()["info"]
    assert info["rpm_limit"] == 2**31 - 1 and info["budget_duration"] == "36500d"
    assert info["expires"].startswith("9999-12-31")
    team = admin.ok("/team/new", {"team_alias": "é" * 255})
    assert team["team_alias"] == "é" * 255
    user = admin.ok("/user/new", {"user_email": "e" * 308 + "@example.com", "auto_create_key": False})
    assert len(user["user_email"]) == 320
    assert admin.get("/spend/logs", page=1_000_000, start_date="0001-01-01T00:00:00+00:00").json()["data"] == []
