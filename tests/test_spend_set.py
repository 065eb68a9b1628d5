"""An admin setting a spend (/key/update or /user/update with `spend`) takes effect at once (issue 11):
a budget used up is admitted again after `spend: 0`, and refused after a spend above the budget —
on one gateway, on two sharing Redis (the next request on the other one), and on two sharing only
the database (within the change feed's second). Before, the limiter kept its counter for the window
and the set waited for the next one."""

from __future__ import annotations

import time

import httpx

from .servers import Keystile
from .test_usage_e2e import config

BODY = {"model": "priced-fast", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
BUDGET = 0.05  # about four requests of the fake upstream's 7 + 2 tokens (0.011 each)


class Gateway:
    def __init__(self, server: Keystile):
        self.server = server

    def admin(self, path: str, body: dict) -> dict:
        r = httpx.post(self.server.url + path, json=body, timeout=10,
                       headers={"Authorization": f"Bearer {self.server.master_key}"})
        assert r.status_code == 200, r.text
        return r.json()

    def chat(self, key: str) -> int:
        r = httpx.post(self.server.url + "/v1/chat/completions", json=BODY, timeout=10,
                       headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200 or r.json()["error"]["code"] == "budget_exceeded", r.text
        return r.status_code

    def use_up(self, key: str) -> None:
        """Requests until the budget refuses one."""
        for _ in range(20):
            if self.chat(key) == 429:
                return
        raise AssertionError("the budget never refused")


def within(seconds: float, gateway: Gateway, key: str, status: int) -> float:
    """How long until `gateway` answers `key` with `status` (failing after `seconds`)."""
    start = time.monotonic()
    while gateway.chat(key) != status:
        assert time.monotonic() - start < seconds, f"still not {status} after {seconds} s"
        time.sleep(0.05)
    return time.monotonic() - start


def check(admin: Gateway, gateways: list[Gateway], delay: float, **owner) -> None:
    """A key (or its user, `owner`) with BUDGET used up on every gateway; reset to 0, then set above
    the budget, through `admin`: the first gateway follows at once, the others within `delay`."""
    if owner:
        admin.admin("/user/new", {**owner, "max_budget": BUDGET, "auto_create_key": False})
        key = admin.admin("/key/generate", owner)["key"]
        update = ("/user/update", owner)
    else:
        made = admin.admin("/key/generate", {"max_budget": BUDGET})
        key, update = made["key"], ("/key/update", {"key": made["token"]})
    for gateway in gateways:
        gateway.use_up(key)
    assert [g.chat(key) for g in gateways] == [429] * len(gateways)

    admin.admin(update[0], {**update[1], "spend": 0})
    assert gateways[0].chat(key) == 200, "spend 0 did not reopen the budget at once"
    for gateway in gateways[1:]:
        within(delay, gateway, key, 200)

    admin.admin(update[0], {**update[1], "spend": BUDGET * 2})
    assert gateways[0].chat(key) == 429, "a spend above the budget was not refused at once"
    for gateway in gateways[1:]:
        within(delay, gateway, key, 429)


def test_one_gateway(tmp_path, upstream):
    with Keystile(tmp_path, config(upstream)) as server:
        gateway = Gateway(server)
        check(gateway, [gateway], 0)
        check(gateway, [gateway], 0, user_id=f"spender-{time.time_ns()}")


def test_two_gateways_sharing_redis(tmp_path, upstream, pg_url, redis_url):
    env = {"REDIS_URL": redis_url}
    with Keystile(tmp_path, config(upstream), database_url=pg_url, env=env) as a, \
            Keystile(tmp_path, config(upstream), database_url=pg_url, env=env) as b:
        # The other gateway's very next request sees the shared counter.
        check(Gateway(a), [Gateway(a), Gateway(b)], 0.0)
        check(Gateway(a), [Gateway(b), Gateway(a)], 0.0, user_id=f"spender-{time.time_ns()}")


def test_two_gateways_without_redis(tmp_path, upstream):
    """(The change feed on Postgres, ids committed out of order included, is tested in test_keys.py
    and test_key_cache.py; the spend rows travel on it like any other.)"""
    url = f"sqlite+aiosqlite:///{tmp_path}/shared.db"
    with Keystile(tmp_path, config(upstream), database_url=url) as a, \
            Keystile(tmp_path, config(upstream), database_url=url) as b:
        check(Gateway(a), [Gateway(a), Gateway(b)], 1.5)  # the change feed: polled every 0.5 s (+ load)
        check(Gateway(a), [Gateway(a), Gateway(b)], 1.5, user_id=f"spender-{time.time_ns()}")
