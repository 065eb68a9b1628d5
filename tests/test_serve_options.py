"""`keystile serve` options for production: `--workers N` (without Redis it warns that each worker
counts alone; with REDIS_URL the workers share one count and key blocks) and the trusted proxies
whose X-Forwarded-For is believed (none by default; KEYSTILE_TRUSTED_PROXIES or
keystile_settings.trusted_proxies)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from .conftest import relay_config
from .servers import Keystile
from .test_limits_e2e import Gateway, burst, fresh_window


def test_workers_without_redis_warn(tmp_path, upstream):
    with Keystile(tmp_path, relay_config(upstream), args=("--workers", "2")) as server:
        assert httpx.get(server.url + "/health/liveliness").status_code == 200
        log = server.logs()
    assert "warning: --workers 2 without REDIS_URL" in log
    assert "each worker counts rate limits" in log


def test_one_worker_without_redis_does_not_warn(relay):
    assert "without REDIS_URL" not in relay.logs()


async def test_workers_share_limits_and_blocks_through_redis(tmp_path, upstream, redis_url, pg_url):
    with Keystile(tmp_path, relay_config(upstream), env={"REDIS_URL": redis_url}, database_url=pg_url,
                  args=("--workers", "2")) as server:
        assert "without REDIS_URL" not in server.logs()
        gw = Gateway(server)
        key, _ = await gw.key(rpm_limit=5)
        await fresh_window(need_s=10)
        # each request on its own connection: the kernel hands connections to both workers
        answers = await burst([(server.url, key, {"model": "echo", "messages": [{"role": "user", "content": "hi"}]})] * 12)
        assert sorted(r.status_code for r in answers) == [200] * 5 + [429] * 7
        other, _ = await gw.key()
        await burst([(server.url, other, {"model": "echo", "messages": [{"role": "user", "content": "hi"}]})] * 8)
        await gw.admin("/key/block", {"key": other})
        await asyncio.sleep(0.3)
        after = await burst([(server.url, other, {"model": "echo", "messages": [{"role": "user", "content": "hi"}]})] * 8)
        assert [r.status_code for r in after] == [403] * 8


BAD_KEY = {"Authorization": "Bearer sk-" + "y" * 43}


async def _failures_until_throttled(url: str, forwarded: list[str]) -> int | None:
    """Bad keys, each claiming the next X-Forwarded-For address: the attempt refused with 429, if any."""
    async with httpx.AsyncClient(timeout=10) as c:
        for i, address in enumerate(forwarded, 1):
            r = await c.get(url + "/v1/models", headers={**BAD_KEY, "X-Forwarded-For": address})
            if r.status_code == 429:
                assert r.json()["error"]["code"] == "auth_throttled"
                return i
            assert r.status_code == 401, r.text
    return None


async def test_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy(tmp_path, upstream):
    """By default nobody is trusted (uvicorn's own default would trust 127.0.0.1): changing
    X-Forwarded-For on every attempt does not escape the failed-auth throttle."""
    claims = [f"10.0.0.{i}" for i in range(1, 8)]
    with Keystile(tmp_path, relay_config(upstream, auth_failures_per_minute=3)) as server:
        assert await _failures_until_throttled(server.url, claims) == 4
    with Keystile(tmp_path, relay_config(upstream, auth_failures_per_minute=3),
                  env={"KEYSTILE_TRUSTED_PROXIES": "127.0.0.0/8"}) as server:
        # the test client is now a trusted proxy: each claimed address is counted on its own
        assert await _failures_until_throttled(server.url, claims) is None
        assert await _failures_until_throttled(server.url, ["10.0.0.1"]) is None  # its 2nd failure
        assert await _failures_until_throttled(server.url, ["10.0.0.1", "10.0.0.1"]) == 2


@pytest.mark.parametrize("env, settings, message", [
    ({"KEYSTILE_TRUSTED_PROXIES": "10.0.0.0/8,nginx"}, {}, "KEYSTILE_TRUSTED_PROXIES: 'nginx' is not an IP address"),
    ({}, {"trusted_proxies": ["10.0.0.300"]}, "keystile_settings.trusted_proxies: Value error, '10.0.0.300' is not"),
])
def test_bad_trusted_proxies_stop_startup_with_the_setting_named(tmp_path, upstream, env, settings, message):
    server = Keystile(tmp_path, relay_config(upstream, **settings), env=env)
    with pytest.raises(RuntimeError, match="keystile exited"):
        server.start()
    assert message in server.logs()
