"""The Redis limiter: counters shared by every instance, one EVALSHA round trip per acquire and
one per release (scripts in lua.py), with an in-process fallback while Redis is unreachable.
Commands travel on one auto-pipelined connection (pipe.py). Releases are queued, not awaited: the
answer goes out while Redis frees the slot, and the connection's order puts a release ahead of
every later acquire from this instance.

Semantics are those of base.py, with the Redis server's clock. Process death: a lease's parallel
slot and budget reservation are members of sorted sets scored by their expiry (`lease_ttl`, default
900 s, longer than the default request timeout) and are dropped by the next acquire after that, so
a crashed instance frees its slots within `lease_ttl`; its token estimates stay counted only until
their 60 s window ends. A request that outlives `lease_ttl` loses its slot (one more may start).

Outage: a connection error or timeout, or an error reply saying Redis cannot take writes now
(LOADING, READONLY, MASTERDOWN, CLUSTERDOWN, TRYAGAIN), logs one warning and switches to the
in-process limiter (same limits, counted per instance, budgets seeded from the caller's database
values). While down, requests go straight to it with no Redis attempt; a background probe (a
small write, so a read-only replica is not taken for a recovery) at most every `probe_interval`
seconds (started by traffic) detects the return, logs once, and switches back.
Leases admitted locally are released locally; releases of Redis leases that fail are queued
(bounded) and replayed when Redis returns, so slots held before the outage are freed then.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from contextlib import suppress
from typing import Any

from redis.exceptions import (BusyLoadingError, ClusterDownError, ConnectionError, MasterDownError, ReadOnlyError,
                              ResponseError, TimeoutError, TryAgainError)

from .base import BudgetSpec, Counts, Lease, LeaseIds, LimitSpec, normalize
from .refusals import budget_refused, rate_refused
from .local import LocalLimiter
from .lua import ACQUIRE, RELEASE, SET_SPEND
from .pipe import RedisPipe
from .windows import WINDOW_S

log = logging.getLogger("keystile")

# Redis cannot count for us right now: lost, stuck, loading its data, a replica (failover), its
# primary gone, or its cluster down or resharding. Each switches to the in-process limits.
OUTAGE = (ConnectionError, TimeoutError, BusyLoadingError, ReadOnlyError, MasterDownError, ClusterDownError,
          TryAgainError, OSError)
PENDING_MAX = 10_000


def connect(url: str) -> RedisPipe:
    """A connection that fails fast instead of retrying: the limiter has its own fallback."""
    return RedisPipe(url, timeout=1.0, connect_timeout=0.5)


class RedisLimiter:
    """Limits shared through Redis; falls back to `fallback` (a LocalLimiter) during outages."""

    def __init__(self, pipe: RedisPipe, *, prefix: str = "keystile", lease_ttl: float = 900.0,
                 probe_interval: float = 1.5, fallback: LocalLimiter | None = None):
        self._pipe = pipe
        self._prefix = prefix
        self._ttl = lease_ttl
        self._probe_interval = probe_interval
        self._local = fallback or LocalLimiter()
        self._acquire = pipe.script(ACQUIRE)
        self._release = pipe.script(RELEASE)
        self._down = False
        self._probed_at = 0.0
        self._probe: asyncio.Task[None] | None = None
        self._pending: deque[tuple[list[str], list[Any]]] = deque(maxlen=PENDING_MAX)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._new_id = LeaseIds()

    @property
    def shared(self) -> bool:
        """True while limits are counted in Redis; False while serving on the in-process fallback."""
        return not self._down

    async def acquire(self, limits: Sequence[LimitSpec], budgets: Sequence[BudgetSpec] = (), *,
                      tokens: int = 0, max_cost: float = 0.0) -> Lease:
        specs, buds = normalize(limits, budgets, tokens, max_cost)
        if not specs and not buds:  # nothing to count anywhere: the in-process limiter's empty lease
            return self._local.admit(specs, buds, tokens=tokens, max_cost=max_cost)
        if self._down:
            self._maybe_probe()
            return self._local.admit(specs, buds, tokens=tokens, max_cost=max_cost)
        lease_id = self._new_id()
        keys = self._keys(specs, buds)
        args: list[Any] = [lease_id, tokens, repr(float(max_cost)), self._ttl, WINDOW_S, len(specs), len(buds)]
        for s in specs:
            args += [_arg(s.rpm), _arg(s.tpm), _arg(s.parallel)]
        for b in buds:
            args += [repr(float(b.max_budget)), repr(float(b.seed_spend)),
                     "" if b.window_reset_at is None else repr(float(b.window_reset_at))]
        try:
            reply = await self._pipe.submit(*self._acquire(keys, args))
            try:
                result = await asyncio.shield(reply)
            except asyncio.CancelledError:
                # The script still runs: give back whatever it admits, in the background.
                reply.add_done_callback(lambda done: self._undo(done, lease_id, keys, specs, buds))
                raise
            except ResponseError as exc:
                if not _no_script(exc):
                    raise
                result = await self._pipe.call(*_eval(ACQUIRE, keys, args))
        except OUTAGE as exc:
            self._went_down(exc)
            return self._local.admit(specs, buds, tokens=tokens, max_cost=max_cost)
        return self._lease(result, lease_id, specs, buds, tokens, max_cost)

    async def release(self, lease: Lease, *, tokens_used: int, cost: float) -> None:
        if lease.owner is self._local:
            self._local.settle(lease, tokens_used=tokens_used, cost=cost)
            return
        if lease.owner is not self:
            raise ValueError("lease was issued by another limiter")
        if lease.released:
            return
        lease.released = True
        if not lease.limits and not lease.budgets:
            return
        keys = self._keys(lease.limits, lease.budgets)
        args = self._release_args(lease, tokens_used - lease.tokens, cost)
        if self._down:
            self._pending.append((keys, args))
            self._maybe_probe()
            return
        await self._send_release(keys, args)

    async def set_spend(self, change: int, budget: BudgetSpec) -> None:
        """In Redis (once for all instances: every process applies each set, the first one counts)
        and in the in-process fallback's counters."""
        await self._local.set_spend(change, budget)
        if self._down:
            return  # the other processes apply it too; one of them may reach Redis
        key = self._keys((), (budget,))[0]
        try:
            await self._pipe.call(*_eval(SET_SPEND, [key], [repr(float(budget.seed_spend)), change]))
        except OUTAGE as exc:
            self._went_down(exc)

    async def aclose(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)
        if not self._down:
            with suppress(*OUTAGE, asyncio.TimeoutError):  # replies come in order: the queued releases are done
                await asyncio.wait_for(self._pipe.call("PING"), 2.0)
        await self._pipe.aclose()
        await self._local.aclose()

    # -- internals ---------------------------------------------------------------------------

    def _keys(self, specs: Sequence[LimitSpec], buds: Sequence[BudgetSpec]) -> list[str]:
        p = self._prefix
        keys: list[str] = []
        for s in specs:
            keys += [f"{p}:rate:{s.scope}", f"{p}:par:{s.scope}"]
        for b in buds:
            window = "life" if b.window_reset_at is None else str(int(b.window_reset_at))
            keys += [f"{p}:bud:{b.scope}:{window}", f"{p}:budx:{b.scope}:{window}"]
        return keys

    @staticmethod
    def _release_args(lease: Lease, delta: int, cost: float) -> list[Any]:
        args: list[Any] = [lease.id, lease.window, delta, repr(float(cost)), len(lease.limits), len(lease.budgets)]
        return args + ["1" if s.counted else "0" for s in lease.limits]

    def _lease(self, result: list[Any], lease_id: str, specs: tuple[LimitSpec, ...],
               buds: tuple[BudgetSpec, ...], tokens: int, max_cost: float) -> Lease:
        if int(result[0]) == 0:
            kind, index = _text(result[1]), int(result[2]) - 1
            if kind == "budget":
                b = buds[index]
                raise budget_refused(b, float(_text(result[3])), float(_text(result[4])), time.time())
            used = int(float(_text(result[3])))
            raise rate_refused(specs[index], kind, used, tokens, int(result[4]) / 1000)  # type: ignore[arg-type]
        reset_s, window = int(result[1]) / 1000, int(result[2])
        counts = iter(int(x) for x in result[3:])
        usage = tuple(Counts(s, next(counts), next(counts)) for s in specs if s.counted)
        return Lease(lease_id, specs, buds, tokens, max_cost, window, reset_s, usage, owner=self)

    async def _send_release(self, keys: list[str], args: list[Any]) -> None:
        """Queue the release script without waiting for Redis to run it; a failure is dealt with
        when its reply (or the connection's loss) arrives."""
        try:
            reply = await self._pipe.submit(*self._release(keys, args))
        except OUTAGE as exc:
            self._pending.append((keys, args))
            self._went_down(exc)
            return
        reply.add_done_callback(lambda done: self._released(done, keys, args))

    def _released(self, done: asyncio.Future[Any], keys: list[str], args: list[Any]) -> None:
        exc = None if done.cancelled() else done.exception()
        if exc is None:
            return
        if isinstance(exc, OUTAGE):
            self._pending.append((keys, args))  # replayed (with EVAL) by the probe once Redis is back
            self._went_down(exc)
        elif _no_script(exc):
            self._pending.append((keys, args))
            self._maybe_probe()
        else:
            log.error("redis limiter: release failed: %s", exc)

    def _undo(self, done: asyncio.Future[Any], lease_id: str, keys: list[str],
              specs: tuple[LimitSpec, ...], buds: tuple[BudgetSpec, ...]) -> None:
        """Release what a cancelled acquire was admitted to (no token or cost to settle)."""
        if done.cancelled() or done.exception() is not None or int(done.result()[0]) == 0:
            return
        lease = self._lease(done.result(), lease_id, specs, buds, 0, 0.0)
        self._keep(asyncio.ensure_future(self._send_release(keys, self._release_args(lease, 0, 0.0))))

    def _went_down(self, exc: BaseException) -> None:
        if not self._down:
            self._down = True
            self._probed_at = time.monotonic()
            log.warning("redis unreachable (%s: %s): rate limits and budgets are counted per instance "
                        "until it returns", type(exc).__name__, exc)

    def _maybe_probe(self) -> None:
        now = time.monotonic()
        if self._probe is None and now - self._probed_at >= self._probe_interval:
            self._probed_at = now
            self._probe = asyncio.get_running_loop().create_task(self._check())

    async def _check(self) -> None:
        try:
            await self._pipe.call("SET", f"{self._prefix}:probe", "1", "PX", 60_000)
            while self._pending:
                keys, args = self._pending[0]
                await self._pipe.call(*_eval(RELEASE, keys, args))
                self._pending.popleft()
        except OUTAGE:
            return
        except Exception:  # a script error must not wedge the limiter in fallback mode
            log.exception("redis limiter: replaying releases failed")
            self._pending.clear()
        finally:
            self._probe = None
        if self._down:
            self._down = False
            log.warning("redis reachable again: rate limits and budgets are shared across instances again")

    def _keep(self, task: asyncio.Task[Any] | asyncio.Future[Any]) -> None:
        self._tasks.add(task)  # type: ignore[arg-type]
        task.add_done_callback(self._tasks.discard)  # type: ignore[arg-type]


def _eval(script: str, keys: list[str], args: list[Any]) -> tuple[Any, ...]:
    return ("EVAL", script, len(keys), *keys, *args)


def _no_script(exc: BaseException) -> bool:
    """Redis lost its script cache (SCRIPT FLUSH); EVAL with the source loads it again."""
    return isinstance(exc, ResponseError) and str(exc).startswith("NOSCRIPT")


def _arg(value: int | None) -> str | int:
    return "" if value is None else value


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
