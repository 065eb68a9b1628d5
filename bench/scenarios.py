"""The scenarios of bench/relay_bench.py: how each Keystile is set up (config, seeded database,
Redis) and called (which key), and the checks that it is what it claims before and after the load.
Add new ones to SCENARIOS."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field

from client import BODIES, MODEL, get, post, request
from databases import Database, seed_keys
from keystile_server import Keystile


@dataclass(frozen=True)
class Scenario:
    """How Keystile is set up for a run: extra config.yaml content, and what a client sends.

    `seed(db)` runs after `keystile db upgrade` and before Keystile starts (fill the database; returns
    figures for the results). `prepare` runs once Keystile serves and returns the request headers for
    the load (e.g. it can create a virtual key through the admin API and return it as Bearer).
    `check(keystile, headers)` runs before and after the measurements and raises if the scenario is not
    what it claims (a header missing, Redis not counting); it returns what it saw, for the results.
    `redis`: start Keystile with REDIS_URL (--redis-url)."""

    name: str
    description: str
    prepare: Callable[[Keystile], dict[str, str]]
    keystile_settings: dict = field(default_factory=dict)
    seed: Callable[[Database], dict] | None = None
    check: Callable[[Keystile, dict[str, str]], dict] | None = None
    redis: bool = False


def _master(ks: Keystile) -> dict[str, str]:
    return {"Authorization": f"Bearer {ks.master_key}"}


def generate_key(ks: Keystile, fields: dict) -> str:
    status, data = request(ks.server.url, "/key/generate", fields, _master(ks))
    if status != 200:
        raise RuntimeError(f"POST /key/generate answered {status}: {data[:500]!r}")
    return json.loads(data)["key"]


def _virtual(ks: Keystile) -> dict[str, str]:
    return {"Authorization": f"Bearer {generate_key(ks, {'key_alias': 'bench', 'models': [MODEL]})}"}


# High enough never to refuse during a run, but present: every request is counted against them.
# (tpm stays below 2^31: the column is a 32-bit integer on Postgres.)
KEY_LIMITS = {"rpm_limit": 100_000_000, "tpm_limit": 2_000_000_000, "max_parallel_requests": 10_000}
SEED_KEYS = 100_000


def _limited(ks: Keystile) -> dict[str, str]:
    key = generate_key(ks, {"key_alias": "bench-limited", "models": [MODEL], **KEY_LIMITS})
    ks.setup["key_limits"] = KEY_LIMITS
    return {"Authorization": f"Bearer {key}"}


def _check_limit_headers(ks: Keystile, headers: dict[str, str]) -> dict:
    """A JSON request answers 200 with OpenAI's x-ratelimit-* headers (the key's limits were applied)."""
    status, resp_headers, data = post(ks.server.url, "/v1/chat/completions", BODIES["json"], headers)
    if status != 200:
        raise RuntimeError(f"limits check: JSON request answered {status}: {data[:300]!r}")
    want = ("x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens")
    missing = [h for h in want if h not in resp_headers]
    if missing:
        raise RuntimeError(f"limits check: the answer lacks {missing}; headers: {resp_headers}")
    return {h: resp_headers[h] for h in resp_headers if h.startswith("x-ratelimit-")}


def _check_redis_limits(ks: Keystile, headers: dict[str, str]) -> dict:
    """As _check_limit_headers, and the request was counted in Redis: the key's rate hash there
    (keystile:rate:key:<hash>, proxy/limits/lua.py) holds rpm - x-ratelimit-remaining-requests requests.
    Without this the Redis limiter could be serving from its in-process fallback unnoticed."""
    import redis  # Keystile's own dependency

    token_hash = hashlib.sha256(headers["Authorization"].removeprefix("Bearer ").encode()).hexdigest()
    client = redis.Redis.from_url(ks.env["REDIS_URL"])
    try:
        for _ in range(3):  # a window rollover between the answer and the read: try again
            seen = _check_limit_headers(ks, headers)
            w, req = client.hmget(f"keystile:rate:key:{token_hash}", "w", "req")
            counted = KEY_LIMITS["rpm_limit"] - int(seen["x-ratelimit-remaining-requests"])
            if req is not None and int(req) == counted:
                return {**seen, "redis_rate_hash": {"w": int(w), "req": int(req)}}
        raise RuntimeError(f"redis check: keystile:rate:key:{token_hash[:12]}… holds req={req!r}, the answer says "
                           f"{counted} requests were counted: the limiter is not counting in Redis")
    finally:
        client.close()


def _check_seeded(ks: Keystile, headers: dict[str, str]) -> dict:
    """The seeded rows are in the database and read back through Keystile like a generated key:
    GET /key/list counts SEED_KEYS + 1 keys, and a seeded key's fields match the generated one's."""
    status, data = get(ks.server.url, "/key/list?page=1&size=5&return_full_object=true", _master(ks))
    if status != 200:
        raise RuntimeError(f"seed check: GET /key/list answered {status}: {data[:300]!r}")
    listed = json.loads(data)
    if listed["total_count"] != SEED_KEYS + 1:
        raise RuntimeError(f"seed check: /key/list counts {listed['total_count']} keys, expected {SEED_KEYS + 1}")
    mine = hashlib.sha256(headers["Authorization"].removeprefix("Bearer ").encode()).hexdigest()
    generated = next((k for k in listed["keys"] if k["token"] == mine), None)
    seeded = next((k for k in listed["keys"] if k["token"] != mine), None)
    if generated is None or seeded is None:
        raise RuntimeError(f"seed check: expected the generated key and seeded ones first in /key/list: {listed}")
    if seeded["models"] != []:
        raise RuntimeError(f"seed check: a seeded key has models {seeded['models']!r}, not []")
    same = ("aliases", "model_rpm_limit", "model_tpm_limit", "metadata", "spend", "blocked", "key_type")
    differ = {f: (seeded.get(f), generated.get(f)) for f in same if seeded.get(f) != generated.get(f)}
    if set(seeded) != set(generated) or differ or not seeded["key_name"].startswith("sk-..."):
        raise RuntimeError(f"seed check: a seeded key does not read back like a generated one: {differ}; "
                           f"{sorted(set(seeded) ^ set(generated))}")
    return {"keys_listed": listed["total_count"]}


SCENARIOS: dict[str, Scenario] = {
    "master": Scenario("master", "the master key as Bearer", _master),
    "virtual": Scenario("virtual", "a virtual key from POST /key/generate (no limits set), from the key cache",
                        _virtual),
    "keys100k": Scenario("keys100k", f"{SEED_KEYS:,} keys bulk-inserted before start, the load with one more "
                         "virtual key from POST /key/generate (no limits)", _virtual,
                         seed=lambda db: seed_keys(db, SEED_KEYS), check=_check_seeded),
    "local-limits": Scenario("local-limits", "a virtual key with rpm, tpm and parallel limits (never reached), "
                             "counted in process (no REDIS_URL)", _limited, check=_check_limit_headers),
    "redis-limits": Scenario("redis-limits", "a virtual key with rpm, tpm and parallel limits (never reached), "
                             "counted in Redis (REDIS_URL)", _limited, check=_check_redis_limits, redis=True),
    # Add more here: budgets, JWTs, ...
}

