"""Deployment cooldowns shared through Redis: a deployment that one gateway cools down (more than
`allowed_fails` failures in a minute) is skipped by another gateway on the same Redis at once,
without that one sending it a single request first."""

from __future__ import annotations

import asyncio
import time

import httpx

from .conftest import model_entry
from .servers import Keystile

CHAT = {"model": "flaky", "messages": [{"role": "user", "content": "hi"}]}


def config(upstream) -> dict:
    return {"model_list": [model_entry(upstream, "flaky", "fail", model_info={"id": "flaky-bad"}),
                           model_entry(upstream, "flaky", "echo-upstream", model_info={"id": "flaky-good"})],
            "keystile_settings": {"allowed_fails": 1, "cooldown_time": 60, "num_retries": 1}}


async def cooling(c: httpx.AsyncClient, server: Keystile) -> dict:
    r = await c.get(server.url + "/health", headers={"Authorization": f"Bearer {server.master_key}"})
    assert r.status_code == 200, r.text
    states = r.json()["healthy_endpoints"] + r.json()["unhealthy_endpoints"]
    return {s["id"]: s for s in states}


async def test_a_cooldown_on_one_gateway_is_kept_by_the_other(tmp_path, upstream, redis_url, pg_url):
    env = {"REDIS_URL": redis_url}
    with Keystile(tmp_path, config(upstream), env=env, database_url=pg_url) as a, \
            Keystile(tmp_path, config(upstream), env=env, database_url=pg_url) as b:
        async with httpx.AsyncClient(timeout=10) as c:
            assert not (await cooling(c, b))["flaky-bad"]["cooling_down"]
            auth = {"Authorization": f"Bearer {a.master_key}"}
            for _ in range(40):  # the bad deployment is tried first about half the time
                r = await c.post(a.url + "/v1/chat/completions", json=CHAT, headers=auth)
                assert r.status_code == 200, r.text  # retried on the good one
                if (await cooling(c, a))["flaky-bad"]["cooling_down"]:
                    break
            assert (await cooling(c, a))["flaky-bad"]["cooling_down"]
            started = time.monotonic()
            while not (state := (await cooling(c, b))["flaky-bad"])["cooling_down"]:
                assert time.monotonic() - started < 1.0, "the other gateway did not learn of the cooldown"
                await asyncio.sleep(0.02)
            assert state["cooldown_remaining_s"] > 50
            assert "upstream exploded" in state["last_error"]
            assert not (await cooling(c, b))["flaky-good"]["cooling_down"]
            sent_to_bad = sum(1 for body in upstream.requests if body.get("model") == "fail")
            auth_b = {"Authorization": f"Bearer {b.master_key}"}
            answers = await asyncio.gather(*(c.post(b.url + "/v1/chat/completions", json=CHAT, headers=auth_b)
                                             for _ in range(10)))
            assert [r.status_code for r in answers] == [200] * 10
            assert sum(1 for body in upstream.requests if body.get("model") == "fail") == sent_to_bad
