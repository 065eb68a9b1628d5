"""`keystile serve --workers N`: without Redis it warns that each worker counts alone; with REDIS_URL
the workers share one count (a key's rpm holds exactly across them) and key blocks."""

from __future__ import annotations

import asyncio

import httpx

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
