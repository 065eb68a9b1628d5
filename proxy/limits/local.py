"""The in-process limiter: counters in dicts, for a single instance (and as the Redis fallback).

Atomicity comes from asyncio: `admit` and `settle` are plain functions with no await between a
check and its increment, so no other request can interleave. Semantics are those of base.py.
Nothing here outlives the process, so nothing needs expiring except old windows (swept lazily).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .base import BudgetSpec, Counts, Lease, LeaseIds, LimitSpec, budget_admits, normalize, rate_admits
from .refusals import budget_refused, rate_refused
from .windows import WINDOW_S, rate_window

SWEEP_EVERY_S = 60.0
BUDGET_GRACE_S = 3600.0
"""A budget window's counters are kept this long after it resets (late settlements land there)."""
LIFETIME_IDLE_S = 86400.0
"""A lifetime budget's counter unused this long is dropped, so it is re-seeded from the database."""


@dataclass(slots=True)
class _Rate:
    window: int
    requests: int = 0
    tokens: int = 0


@dataclass(slots=True)
class _Budget:
    spend: float
    touched: float
    reserved: float = 0.0
    leases: dict[str, float] = field(default_factory=dict)
    change: int = 0  # the last spend set applied (its change-feed id)


class LocalLimiter:
    """Limits counted in this process. `clock` (epoch seconds) is injectable for tests."""

    def __init__(self, *, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._rates: dict[str, _Rate] = {}
        self._parallel: dict[str, set[str]] = {}
        self._budgets: dict[tuple[str, float | None], _Budget] = {}
        self._swept_at = 0.0
        self._new_id = LeaseIds()

    async def acquire(self, limits: Sequence[LimitSpec], budgets: Sequence[BudgetSpec] = (), *,
                      tokens: int = 0, max_cost: float = 0.0) -> Lease:
        return self.admit(limits, budgets, tokens=tokens, max_cost=max_cost)

    async def release(self, lease: Lease, *, tokens_used: int, cost: float) -> None:
        self.settle(lease, tokens_used=tokens_used, cost=cost)

    async def set_spend(self, change: int, budget: BudgetSpec) -> None:
        state = self._budgets.get((budget.scope, budget.window_reset_at))
        if state is not None and state.change < change:
            state.spend, state.change = budget.seed_spend, change

    async def aclose(self) -> None:
        self._rates.clear()
        self._parallel.clear()
        self._budgets.clear()

    def admit(self, limits: Sequence[LimitSpec], budgets: Sequence[BudgetSpec] = (), *,
              tokens: int = 0, max_cost: float = 0.0) -> Lease:
        """Check every limit, then count in every one; raises LimitExceeded and counts nothing."""
        specs, buds = normalize(limits, budgets, tokens, max_cost)
        if not specs and not buds:  # nothing to count (the master key, a key without limits)
            return Lease(self._new_id(), (), (), tokens, max_cost, 0, float(WINDOW_S), owner=self)
        now = self._clock()
        window, reset_s = rate_window(now)
        if now - self._swept_at >= SWEEP_EVERY_S:
            self._sweep(now, window)
        rates, parallel = self._rates, self._parallel
        for spec in specs:
            rate = rates.get(spec.scope)
            used_r, used_t = (rate.requests, rate.tokens) if rate is not None and rate.window == window else (0, 0)
            if spec.rpm is not None and not rate_admits(used_r, 1, spec.rpm):
                raise rate_refused(spec, "rpm", used_r, tokens, reset_s)
            if spec.tpm is not None and not rate_admits(used_t, tokens, spec.tpm):
                raise rate_refused(spec, "tpm", used_t, tokens, reset_s)
            if spec.parallel is not None:
                in_flight = len(parallel.get(spec.scope, ()))
                if not rate_admits(in_flight, 1, spec.parallel):
                    raise rate_refused(spec, "parallel", in_flight, tokens, reset_s)
        for b in buds:
            state = self._budgets.get((b.scope, b.window_reset_at))
            spend, reserved = (state.spend, state.reserved) if state else (b.seed_spend, 0.0)
            if not budget_admits(spend, reserved, b.max_budget):
                raise budget_refused(b, spend, reserved, now)

        lease_id = self._new_id()
        usage = []
        for spec in specs:
            if spec.counted:
                rate = rates.get(spec.scope)
                if rate is None or rate.window != window:
                    rate = rates[spec.scope] = _Rate(window)
                rate.requests += 1
                rate.tokens += tokens
                usage.append(Counts(spec, rate.requests, rate.tokens))
            if spec.parallel is not None:
                slots = parallel.get(spec.scope)
                if slots is None:
                    slots = parallel[spec.scope] = set()
                slots.add(lease_id)
        for b in buds:
            state = self._budgets.setdefault((b.scope, b.window_reset_at), _Budget(b.seed_spend, now))
            state.touched = now
            if max_cost > 0:
                state.reserved += max_cost
                state.leases[lease_id] = max_cost
        return Lease(lease_id, specs, buds, tokens, max_cost, window, reset_s, tuple(usage), owner=self)

    def settle(self, lease: Lease, *, tokens_used: int, cost: float) -> None:
        """Apply the real usage to the admission window, free parallel slots; once per lease."""
        if lease.released:
            return
        lease.released = True
        delta = tokens_used - lease.tokens
        for spec in lease.limits:
            rate = self._rates.get(spec.scope)
            if spec.counted and delta and rate is not None and rate.window == lease.window:
                rate.tokens = max(0, rate.tokens + delta)
            slots = self._parallel.get(spec.scope)
            if slots is not None:
                slots.discard(lease.id)
                if not slots:
                    del self._parallel[spec.scope]
        for b in lease.budgets:
            state = self._budgets.get((b.scope, b.window_reset_at))
            if state is None:
                continue
            amount = state.leases.pop(lease.id, None)
            if amount is not None:
                state.reserved = state.reserved - amount if state.leases else 0.0
            state.spend += cost

    def _sweep(self, now: float, window: int) -> None:
        """Drop counters of ended windows (admit calls it at most once a minute, so admission stays
        O(limits))."""
        self._swept_at = now
        for scope in [s for s, r in self._rates.items() if r.window < window]:
            del self._rates[scope]
        for key in [k for k, b in self._budgets.items() if not b.leases and (
                k[1] + BUDGET_GRACE_S < now if k[1] is not None else b.touched + LIFETIME_IDLE_S < now)]:
            del self._budgets[key]
