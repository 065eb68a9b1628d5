"""The limits package: atomic rpm/tpm/parallel/budget admission, in process and through real Redis
(127.0.0.1:6379, a unique key prefix per test), across instances and OS processes, and the fallback
while a Redis server of our own (on a free port) is down."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
import uuid
from contextlib import suppress
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from proxy.domain import Principal, Scope
from proxy.errors import RateLimited, as_keystile, error_body
from proxy.limits import (BudgetSpec, Lease, LimitExceeded, LimitSpec, LocalLimiter, RedisLimiter, budget_spec,
                          connect, format_reset, make_limiter, next_reset, parse_duration, request_limits)

from .redis_server import OwnRedis, reachable

REDIS_URL = "redis://127.0.0.1:6379/0"
ROOT = Path(__file__).resolve().parent.parent


async def fresh_window(min_left: float = 5.0) -> None:
    """Wait for the next 60 s window if this one ends within `min_left` (tests count one window)."""
    left = 60 - time.time() % 60
    if left < min_left:
        await asyncio.sleep(left + 0.05)


@pytest.fixture
def prefix():
    """A key prefix of this test's own on the shared Redis; its keys are deleted afterwards."""
    if not reachable(6379):
        pytest.skip("Redis is not reachable at 127.0.0.1:6379")
    name = f"keystile-test:{uuid.uuid4().hex}"
    yield name
    with SyncRedis.from_url(REDIS_URL) as client:
        keys = list(client.scan_iter(match=f"{name}:*"))
        if keys:
            client.delete(*keys)


@pytest.fixture(params=["local", "redis"])
async def limiter(request):
    if request.param == "local":
        yield LocalLimiter()
        return
    name = request.getfixturevalue("prefix")
    lim = RedisLimiter(connect(REDIS_URL), prefix=name)
    yield lim
    assert lim.shared, "the shared Redis must not have fallen back during the test"
    await lim.aclose()


def headers(lease: Lease) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in lease.headers()}


async def _admit_many(lim, n: int, limits, budgets=(), **kw) -> tuple[list[Lease], list[LimitExceeded]]:
    results = await asyncio.gather(*(lim.acquire(limits, budgets, **kw) for _ in range(n)), return_exceptions=True)
    leases = [r for r in results if isinstance(r, Lease)]
    refused = [r for r in results if isinstance(r, LimitExceeded)]
    assert len(leases) + len(refused) == n, [r for r in results if not isinstance(r, (Lease, LimitExceeded))]
    return leases, refused


async def test_rpm_50_concurrent_exactly_10(limiter):
    await fresh_window()
    leases, refused = await _admit_many(limiter, 50, [LimitSpec("key:k1", rpm=10)])
    assert len(leases) == 10
    err = refused[0]
    assert (err.kind, err.scope, err.limit, err.remaining, err.scope_type) == ("rpm", "key:k1", 10, 0, "key")
    http = as_keystile(err)  # a plain exception, a 429 only through the one error mapping
    assert 1 <= int(http.headers["Retry-After"]) <= 60
    assert isinstance(http, RateLimited) and http.status == 429
    body = orjson.loads(error_body(http))["error"]
    assert body["type"] == "rate_limit_error" and body["code"] == "rate_limit_exceeded"


async def test_rpm_shared_by_two_redis_instances(prefix):
    await fresh_window()
    a, b = (RedisLimiter(connect(REDIS_URL), prefix=prefix) for _ in range(2))
    spec = [LimitSpec("key:shared", rpm=10)]
    (la, _), (lb, _) = await asyncio.gather(_admit_many(a, 25, spec), _admit_many(b, 25, spec))
    assert len(la) + len(lb) == 10
    await a.aclose()
    await b.aclose()


CHILD = """
import asyncio, sys, time
from proxy.limits import LimitExceeded, LimitSpec, make_limiter

async def main(url, prefix, start):
    limiter = make_limiter(url, prefix=prefix)
    await asyncio.sleep(max(0.0, start - time.time()))
    spec = [LimitSpec("key:shared", rpm=10)]
    results = await asyncio.gather(*(limiter.acquire(spec) for _ in range(25)), return_exceptions=True)
    print(sum(not isinstance(r, BaseException) for r in results), sum(isinstance(r, LimitExceeded) for r in results))
    await limiter.aclose()

asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
"""


async def test_rpm_shared_by_two_processes(prefix):
    await fresh_window(min_left=20)
    start = time.time() + 4  # both children fire at the same instant, after their imports
    procs = [await asyncio.create_subprocess_exec(sys.executable, "-c", CHILD, REDIS_URL, prefix, str(start),
                                                  cwd=ROOT, stdout=asyncio.subprocess.PIPE) for _ in range(2)]
    outs = [await asyncio.wait_for(p.communicate(), 30) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    admitted, refused = (sum(int(out.split()[i]) for out, _ in outs) for i in (0, 1))
    assert (admitted, refused) == (10, 40)


async def test_all_or_nothing(limiter):
    await fresh_window()
    loose, tight = LimitSpec("key:a", rpm=5), LimitSpec("team:b", rpm=1)
    await limiter.acquire([loose, tight])
    with pytest.raises(LimitExceeded) as refused:
        await limiter.acquire([loose, tight])
    assert refused.value.scope == "team:b"
    spent = BudgetSpec("key:a", max_budget=1.0, seed_spend=1.0)
    for _ in range(3):
        with pytest.raises(LimitExceeded, match="Budget has been exceeded!"):
            await limiter.acquire([loose], [spent])
    leases, _ = await _admit_many(limiter, 10, [loose])
    assert len(leases) == 4  # only the first request was counted on key:a


async def test_tpm_reserve_and_settle(limiter):
    await fresh_window()
    spec = [LimitSpec("key:t", tpm=100)]
    first = await limiter.acquire(spec, tokens=60)
    with pytest.raises(LimitExceeded) as refused:
        await limiter.acquire(spec, tokens=60)
    assert (refused.value.kind, refused.value.remaining) == ("tpm", 40)
    await limiter.release(first, tokens_used=20, cost=0.0)  # 60 reserved, 20 used: counter 20
    second = await limiter.acquire(spec, tokens=60)
    assert headers(second)["x-ratelimit-remaining-tokens"] == "20"
    await limiter.release(second, tokens_used=90, cost=0.0)  # counter 110: full
    with pytest.raises(LimitExceeded):
        await limiter.acquire(spec, tokens=0)


async def test_parallel_and_idempotent_release(limiter):
    spec = [LimitSpec("user:p", parallel=2)]
    one, _two = await limiter.acquire(spec), await limiter.acquire(spec)
    with pytest.raises(LimitExceeded) as refused:
        await limiter.acquire(spec)
    assert refused.value.kind == "parallel" and as_keystile(refused.value).headers["Retry-After"] == "1"
    for _ in range(3):
        await limiter.release(one, tokens_used=0, cost=0.0)
    await limiter.acquire(spec)
    with pytest.raises(LimitExceeded):
        await limiter.acquire(spec)  # releasing `one` thrice freed one slot, not three


async def test_release_on_cancellation_frees_the_slot(limiter):
    spec = [LimitSpec("key:c", parallel=1)]

    async def request():
        lease = await limiter.acquire(spec)
        try:
            await asyncio.sleep(30)
        finally:
            await limiter.release(lease, tokens_used=0, cost=0.0)

    task = asyncio.create_task(request())
    await asyncio.sleep(0.1)
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task
    await limiter.acquire(spec)


async def test_cancelled_redis_acquires_leak_no_slot(prefix):
    limiter = RedisLimiter(connect(REDIS_URL), prefix=prefix)
    spec = [LimitSpec("key:cancel", parallel=100)]
    await limiter.acquire([LimitSpec("key:warm", rpm=5)])  # connected, script loaded
    client = Redis.from_url(REDIS_URL)
    await client.client_pause(300)  # Redis holds every other client's commands for 0.3 s
    tasks = [asyncio.create_task(limiter.acquire(spec)) for _ in range(20)]
    await asyncio.sleep(0.05)  # the scripts are on the wire: Redis admits them after the callers are gone
    for t in tasks:
        t.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    await asyncio.sleep(0.6)
    assert await client.zcard(f"{prefix}:par:key:cancel") == 0
    await client.aclose()
    await limiter.aclose()


async def test_limiter_survives_a_flushed_script_cache(prefix):
    limiter = RedisLimiter(connect(REDIS_URL), prefix=prefix)
    spec = [LimitSpec("key:flush", rpm=100, parallel=1)]
    lease = await limiter.acquire(spec)
    admin = Redis.from_url(REDIS_URL)
    await admin.script_flush()
    await limiter.release(lease, tokens_used=0, cost=0.0)  # NOSCRIPT: replayed with EVAL
    await asyncio.sleep(0.3)  # the probe replays it
    lease = await limiter.acquire(spec)  # EVAL again; admitted only if the release went through
    assert lease.counts[0].requests == 2
    await limiter.release(lease, tokens_used=0, cost=0.0)
    assert limiter.shared
    await admin.aclose()
    await limiter.aclose()


async def test_budget_50_concurrent_overshoot_bounded_by_one_max_cost(limiter):
    window = time.time() + 3600
    budget = [BudgetSpec("team:b", max_budget=1.0, window_reset_at=window, seed_spend=0.65)]
    leases, refused = await _admit_many(limiter, 50, [], budget, max_cost=0.1)
    assert len(leases) == 4  # admitted while spend + in flight < 1.0: at 0.65, 0.75, 0.85 and 0.95
    err = refused[0]
    assert as_keystile(err).code == "budget_exceeded" and err.kind == "budget" and err.limit == 1.0
    assert err.message.startswith("Budget has been exceeded! ")
    assert 3590 <= int(as_keystile(err).headers["Retry-After"]) <= 3600 and "in flight 0.4000" in err.message
    for lease in leases:
        await limiter.release(lease, tokens_used=0, cost=0.07)  # spend 0.93
    leases, _ = await _admit_many(limiter, 50, [], budget, max_cost=0.0)
    assert len(leases) == 50  # spend 0.93 < 1.0: requests of unknown (0) max cost still pass
    for lease in leases[:2]:
        await limiter.release(lease, tokens_used=0, cost=0.04)  # unknown costs overshoot by their own
    with pytest.raises(LimitExceeded, match="spent 1.0100"):
        await limiter.acquire([], budget, max_cost=0.0)


async def test_budget_first_request_passes_whatever_its_max_cost(limiter):
    budget = [BudgetSpec("key:small", max_budget=0.10, window_reset_at=None, seed_spend=0.0)]
    lease = await limiter.acquire([], budget, max_cost=0.49)  # LiteLLM admits it; so does Keystile now
    with pytest.raises(LimitExceeded, match=r"in flight 0\.4900"):  # its reservation holds the next one
        await limiter.acquire([], budget, max_cost=0.01)
    await limiter.release(lease, tokens_used=0, cost=0.04)
    second = await limiter.acquire([], budget, max_cost=0.49)  # 0.04 spent: room again
    await limiter.release(second, tokens_used=0, cost=0.07)
    with pytest.raises(LimitExceeded, match=r"spent 0\.1100"):  # 0.11 >= 0.10: exhausted
        await limiter.acquire([], budget, max_cost=0.0)


async def test_budget_seed_only_for_a_new_window(limiter):
    window = time.time() + 3600
    await limiter.acquire([], [BudgetSpec("key:s", 1.0, window, seed_spend=0.5)], max_cost=0.5)
    with pytest.raises(LimitExceeded):  # the limiter's 0.5 + 0.5 wins over a stale database 0.0
        await limiter.acquire([], [BudgetSpec("key:s", 1.0, window, seed_spend=0.0)], max_cost=0.3)


async def test_a_spend_set_replaces_the_counter_once_and_never_after_a_later_one(limiter):
    window = time.time() + 3600
    spec = BudgetSpec("key:set", 1.0, window, seed_spend=0.0)
    held = await limiter.acquire([], [spec], max_cost=0.2)  # in flight across the sets
    await limiter.release(await limiter.acquire([], [spec], max_cost=0.2), tokens_used=0, cost=0.8)
    with pytest.raises(LimitExceeded, match="spent 0.8000, in flight 0.2000"):  # 0.8 + 0.2 reaches the budget
        await limiter.acquire([], [spec], max_cost=0.2)
    await limiter.set_spend(7, BudgetSpec("key:set", 1.0, window, seed_spend=0.0))  # reset: admitted again
    lease = await limiter.acquire([], [spec], max_cost=0.2)
    await limiter.release(lease, tokens_used=0, cost=0.1)
    await limiter.set_spend(7, BudgetSpec("key:set", 1.0, window, seed_spend=0.0))  # the same set again: once
    await limiter.set_spend(5, BudgetSpec("key:set", 1.0, window, seed_spend=0.0))  # an earlier one: never
    big = await limiter.acquire([], [spec], max_cost=0.7)  # 0.1 + 0.2 in flight < 1: admitted
    with pytest.raises(LimitExceeded, match="spent 0.1000, in flight 0.9000"):
        await limiter.acquire([], [spec], max_cost=0.0)
    await limiter.release(big, tokens_used=0, cost=0.0)
    await limiter.set_spend(8, BudgetSpec("key:set", 1.0, window, seed_spend=2.0))  # above the budget
    with pytest.raises(LimitExceeded, match="spent 2.0000"):
        await limiter.acquire([], [spec], max_cost=0.0)
    await limiter.release(held, tokens_used=0, cost=0.1)
    await limiter.set_spend(9, BudgetSpec("key:other", 1.0, window, seed_spend=5.0))  # no counter yet: the
    await limiter.acquire([], [BudgetSpec("key:other", 1.0, window, seed_spend=0.5)], max_cost=0.1)  # seed counts


async def test_budget_window_rollover(limiter):
    w1 = time.time() + 100
    w2 = w1 + 86400
    old = await limiter.acquire([], [BudgetSpec("key:r", 1.0, w1, seed_spend=0.9)], max_cost=0.1)
    with pytest.raises(LimitExceeded):
        await limiter.acquire([], [BudgetSpec("key:r", 1.0, w1, seed_spend=0.9)], max_cost=0.1)
    new = [BudgetSpec("key:r", 1.0, w2, seed_spend=0.0)]
    await limiter.acquire([], new, max_cost=0.5)
    await limiter.release(old, tokens_used=0, cost=0.4)  # settles in w1, not in w2
    await limiter.acquire([], new, max_cost=0.5)
    with pytest.raises(LimitExceeded):
        await limiter.acquire([], new, max_cost=0.01)


async def test_lifetime_budget_refusal_has_no_retry_after(limiter):
    with pytest.raises(LimitExceeded, match="never resets") as refused:
        await limiter.acquire([], [BudgetSpec("key:l", 5.0, None, seed_spend=5.0)])
    assert refused.value.reset_s is None and "Retry-After" not in as_keystile(refused.value).headers


async def test_headers_of_the_tightest_limits():
    limiter = LocalLimiter(clock=lambda: 1_000_000_063.5)  # 16.5 s before the window ends
    key, team = LimitSpec("key:" + "f" * 64, rpm=10, tpm=1000), LimitSpec("team:t", rpm=5, parallel=3)
    lease = await limiter.acquire([key, team], tokens=100)
    assert headers(lease) == {
        "x-ratelimit-limit-requests": "5", "x-ratelimit-remaining-requests": "4", "x-ratelimit-reset-requests": "17s",
        "x-ratelimit-limit-tokens": "1000", "x-ratelimit-remaining-tokens": "900", "x-ratelimit-reset-tokens": "17s"}
    assert headers(await limiter.acquire([LimitSpec("team:t2", parallel=3)])) == {}
    with pytest.raises(LimitExceeded, match=r"key:ffffffff…: 10 requests") as refused:
        for _ in range(10):
            await limiter.acquire([key], tokens=1)
    assert as_keystile(refused.value).headers == {"Retry-After": "17", "x-ratelimit-limit-requests": "10",
                                                  "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "17s"}


async def test_local_rate_window_rollover():
    now = [1_000_000_020.0]  # a window boundary
    limiter = LocalLimiter(clock=lambda: now[0])
    spec = [LimitSpec("key:w", rpm=2, tpm=100)]
    lease = await limiter.acquire(spec, tokens=50)
    await limiter.acquire(spec, tokens=50)
    with pytest.raises(LimitExceeded):
        await limiter.acquire(spec)
    now[0] += 60
    await limiter.release(lease, tokens_used=500, cost=0.0)  # its window has ended: dropped
    assert headers(await limiter.acquire(spec, tokens=100))["x-ratelimit-remaining-tokens"] == "0"


async def test_redis_leases_of_dead_processes_expire(prefix):
    limiter = RedisLimiter(connect(REDIS_URL), prefix=prefix, lease_ttl=1.0)
    spec, budget = [LimitSpec("key:d", parallel=1)], [BudgetSpec("key:d", 1.0, None, 0.0)]
    await limiter.acquire(spec, budget, max_cost=1.0)  # never released, as if its process died
    with pytest.raises(LimitExceeded):
        await limiter.acquire(spec)
    with pytest.raises(LimitExceeded):
        await limiter.acquire([], budget, max_cost=0.6)
    await asyncio.sleep(1.2)
    await limiter.acquire(spec, budget, max_cost=0.6)
    await limiter.aclose()


@pytest.fixture
def own_redis():
    server = OwnRedis().start()
    yield server
    server.stop()


async def test_redis_outage_falls_back_and_returns(own_redis, caplog):
    caplog.set_level(logging.WARNING, logger="keystile")
    limiter = RedisLimiter(connect(own_redis.url), prefix="outage", probe_interval=0.5)
    spec = [LimitSpec("key:o", rpm=1000, parallel=3)]
    before = await limiter.acquire(spec)
    assert before.owner is limiter and limiter.shared
    own_redis.stop()
    local = await limiter.acquire(spec)
    assert not limiter.shared and local.owner is not limiter
    started = time.perf_counter()
    with pytest.raises(LimitExceeded):  # in-process limits still hold: 3 in flight on this instance
        for _ in range(3):
            await limiter.acquire(spec)
    assert time.perf_counter() - started < 0.05  # no Redis attempt per request while it is down
    await limiter.release(before, tokens_used=0, cost=0.0)  # queued for when Redis returns
    down = [r for r in caplog.records if "redis unreachable" in r.getMessage()]
    assert len(down) == 1

    own_redis.start()
    deadline = time.time() + 10
    while not limiter.shared:
        assert time.time() < deadline, "the limiter did not go back to Redis"
        await asyncio.sleep(0.2)
        with suppress(LimitExceeded):
            await limiter.acquire([LimitSpec("key:probe", rpm=1000)])
    back = await limiter.acquire(spec)
    assert back.owner is limiter
    await limiter.release(local, tokens_used=0, cost=0.0)  # local leases settle locally
    assert len([r for r in caplog.records if "reachable again" in r.getMessage()]) == 1
    await limiter.aclose()


def test_parse_duration_and_next_reset():
    assert [parse_duration(d) for d in ("30s", "10m", "1h", "7d", "30d")] == [30, 600, 3600, 604800, 2592000]
    for bad in ("10x", "", "-1d", "1.5h", "0d"):
        with pytest.raises(ValueError, match="invalid duration"):
            parse_duration(bad)
    assert next_reset(86400, 5000.0, anchor=5000.0) == 91400.0
    assert next_reset(100, 1250.0, anchor=1000.0) == 1300.0
    assert next_reset(100, 1300.0, anchor=1000.0) == 1400.0
    assert next_reset(60, 125.0) == 180.0
    assert [format_reset(s) for s in (0.25, 1, 37.2, 60, 360, 3723)] == ["250ms", "1s", "38s", "1m0s", "6m0s", "1h2m3s"]


def test_request_limits_from_a_principal():
    now = datetime(2030, 1, 1, tzinfo=timezone.utc)
    key = Scope("key:h", rpm=10, parallel=2, max_budget=5.0, budget_duration="1d",
                budget_reset_at=now + timedelta(hours=1), spend=1.5)
    team = Scope("team:t", tpm=1000, max_budget=50.0, budget_duration="30d",
                 budget_reset_at=now - timedelta(days=1, hours=1), spend=49.0)
    user = Scope("user:u", max_budget=2.0, spend=0.5)
    principal = Principal(key_hash="h", scopes=(key, user, team), model_rpm={"m": 3}, model_tpm={"other": 9})
    limits, budgets = request_limits(principal, "m", now=now.timestamp())
    # Merged as acquire wants them: the user scope has no rate limit, so it has no spec.
    assert limits == (LimitSpec("key:h", 10, None, 2), LimitSpec("team:t", tpm=1000), LimitSpec("key:h:model:m", rpm=3))
    assert request_limits(principal, "m", now=now.timestamp())[0] is limits  # worked out once per model
    assert request_limits(principal, "other", now=now.timestamp())[0] == limits[:2] + (LimitSpec("key:h:model:other", tpm=9),)
    assert budgets == [BudgetSpec("key:h", 5.0, (now + timedelta(hours=1)).timestamp(), 1.5),
                       BudgetSpec("user:u", 2.0, None, 0.5),
                       BudgetSpec("team:t", 50.0, (now + timedelta(days=29, hours=-1)).timestamp(), 0.0)]
    assert budget_spec(Scope("key:x", rpm=1), now.timestamp()) is None


async def test_make_limiter_picks_the_implementation():
    assert isinstance(make_limiter(None), LocalLimiter)
    remote = make_limiter(os.environ.get("REDIS_URL", REDIS_URL))
    assert isinstance(remote, RedisLimiter)
    await remote.aclose()


def test_request_limits_of_a_principal_without_limits_keep_nothing():
    from proxy.domain import MASTER

    assert request_limits(MASTER, "m", now=0.0) == ((), [])
    assert MASTER.limit_plans == {}  # a module-level principal holds no per-process state
