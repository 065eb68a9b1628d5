"""The limiter interface: what a request asks for (LimitSpec, BudgetSpec), what it gets (Lease),
and the Limiter protocol both implementations (in-process, Redis) satisfy.

Semantics common to every implementation:

- `acquire` checks every limit and budget of one request and, only if all of them admit it,
  counts it in all of them: one atomic step, all or nothing. A refusal raises `LimitExceeded`
  naming the first limit that refused, and changes no counter.
- Rate limits: per scope, `rpm` counts requests and `tpm` counts tokens in fixed 60 s windows (see
  windows.py). A request is admitted when `used + 1 <= rpm` and `used + tokens <= tpm` (so a
  request whose estimate alone exceeds tpm is refused; a 0-token request is refused once the
  window is full). The estimate is reserved at admission; `release` adds `tokens_used - tokens`.
- Parallel: at most `parallel` admitted-but-unreleased leases per scope.
- Budgets: per (scope, window) the limiter keeps `spend` (settled cost, seeded from the caller's
  `seed_spend` the first time it sees that window) and `reserved` (the `max_cost` of every lease
  still in flight). A request is admitted while

      spend + reserved < max_budget

  (with a 1e-9 tolerance for float sums), LiteLLM's rule plus the reservations of requests in
  flight: the first request passes whatever its maximum cost while spend is under the budget, and
  an exhausted budget refuses everything, including requests whose max cost is 0 (unknown or
  free). Overshoot: every admitted request was admitted with the committed sum below the budget and
  then added its `max_cost` to it, so when `max_cost` is a true upper bound the settled spend stays
  below `max_budget + ` the largest single `max_cost`, however many requests race. A request that
  costs more than its `max_cost` (or whose cost was unknown, 0) adds its own excess on top; several
  such requests in flight at once add one excess each.
- Settlement goes to the window the lease was admitted in; if that window has ended meanwhile the
  token/cost adjustment is dropped from the limiter (the accounting records still have it).
- `release` is idempotent: the first call settles and frees the parallel slot; later calls do
  nothing. Call it in a `finally`, with `tokens_used=lease.tokens, cost=0` if nothing is known.
- `set_spend` is an admin setting a scope's spend (/key/update with `spend`, e.g. 0 to reset it):
  the window's `spend` becomes the new value at once (reservations in flight are kept), instead of
  waiting for the next window. Each set carries the id of its change-feed row, so it is applied
  once however many processes pass it on, and never after a later one.
"""

from __future__ import annotations

import itertools
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from ..domain import BudgetSpec, Limits, LimitSpec
from .windows import WINDOW_S, format_reset

__all__ = ["BudgetSpec", "Counts", "Lease", "LeaseIds", "Limiter", "Limits", "LimitSpec", "merge_limits", "normalize"]

_RESETS = tuple(format_reset(s).encode() for s in range(WINDOW_S + 1))
"""`format_reset` of each whole second a rate window can have left, made once (headers on every answer)."""

BUDGET_EPS = 1e-9
"""Tolerance, in currency units, for float sums in budget checks."""


class Counts(NamedTuple):
    """Counts of one rate-limited scope right after this request was admitted."""

    spec: LimitSpec
    requests: int
    tokens: int


@dataclass(eq=False, slots=True)
class Lease:
    """An admitted request. Hand it back to the limiter that issued it with `release`."""

    id: str
    limits: tuple[LimitSpec, ...]
    budgets: tuple[BudgetSpec, ...]
    tokens: int
    max_cost: float
    window: int
    reset_s: float
    counts: tuple[Counts, ...] = ()
    owner: object = None
    released: bool = field(default=False)

    def headers(self) -> list[tuple[bytes, bytes]]:
        """OpenAI's x-ratelimit-* headers for the tightest rpm and tpm limit of this request, as raw
        ASGI header pairs (they go on every answer, so they are made without a detour through str).

        Tightest = fewest remaining after this request (ties: the smaller limit). Resets are the
        time to the end of the current 60 s window, formatted like OpenAI (`37s`, `1m0s`,
        `250ms`). Empty when no rpm or tpm limit applied.
        """
        rpm: tuple[int, int] | None = None  # (remaining, limit) of the tightest so far
        tpm: tuple[int, int] | None = None
        for spec, requests, tokens in self.counts:
            limit = spec.rpm
            if limit is not None and (rpm is None or (limit - requests, limit) < rpm):
                rpm = (limit - requests, limit)
            limit = spec.tpm
            if limit is not None and (tpm is None or (limit - tokens, limit) < tpm):
                tpm = (limit - tokens, limit)
        if rpm is None and tpm is None:
            return []
        reset_s = self.reset_s
        whole = math.ceil(reset_s)
        reset = _RESETS[whole] if reset_s >= 1 and whole <= WINDOW_S else format_reset(reset_s).encode()
        out: list[tuple[bytes, bytes]] = []
        if rpm is not None:
            left, limit = rpm
            out += ((b"x-ratelimit-limit-requests", b"%d" % limit),
                    (b"x-ratelimit-remaining-requests", b"%d" % (left if left > 0 else 0)),
                    (b"x-ratelimit-reset-requests", reset))
        if tpm is not None:
            left, limit = tpm
            out += ((b"x-ratelimit-limit-tokens", b"%d" % limit),
                    (b"x-ratelimit-remaining-tokens", b"%d" % (left if left > 0 else 0)),
                    (b"x-ratelimit-reset-tokens", reset))
        return out


class Limiter(Protocol):
    async def acquire(self, limits: Sequence[LimitSpec], budgets: Sequence[BudgetSpec] = (), *,
                      tokens: int = 0, max_cost: float = 0.0) -> Lease:
        """Admit one request against all its limits and budgets at once, or raise LimitExceeded."""
        ...

    async def release(self, lease: Lease, *, tokens_used: int, cost: float) -> None:
        """Settle tokens and cost, free the parallel slots. Idempotent; never raises for outages."""
        ...

    async def set_spend(self, change: int, budget: BudgetSpec) -> None:
        """The spend of `budget`'s scope and window was set to `budget.seed_spend` (change-feed row
        `change`). Without a counter for that window yet there is nothing to do: the next request
        seeds one from the database. Never raises for outages."""
        ...

    async def aclose(self) -> None:
        ...


class LeaseIds:
    """Unique lease ids without a syscall each: a random prefix per limiter and a counter (parallel
    slots in Redis are keyed by lease id, so ids must not collide across instances)."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._count = itertools.count()

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._count):x}"


def normalize(limits: Sequence[LimitSpec], budgets: Sequence[BudgetSpec], tokens: int,
              max_cost: float) -> tuple[Limits, tuple[BudgetSpec, ...]]:
    """Validate a request's limits and merge duplicates by scope (tightest wins); drop empty specs.
    Limits are handed back as they are."""
    if tokens < 0 or max_cost < 0:
        raise ValueError(f"tokens and max_cost must be >= 0, got {tokens!r} and {max_cost!r}")
    specs = limits if type(limits) is Limits else merge_limits(limits)
    if not budgets:
        return specs, ()
    by_window: dict[tuple[str, float | None], BudgetSpec] = {}
    for b in budgets:
        key = (b.scope, b.window_reset_at)
        old_b = by_window.get(key)
        by_window[key] = b if old_b is None else BudgetSpec(
            b.scope, min(old_b.max_budget, b.max_budget), b.window_reset_at, max(old_b.seed_spend, b.seed_spend))
    return specs, tuple(by_window.values())


def merge_limits(limits: Sequence[LimitSpec]) -> Limits:
    """The limits validated, merged by scope (tightest wins) and without empty specs."""
    merged: dict[str, LimitSpec] = {}
    for spec in limits:
        rpm, tpm, parallel = spec.rpm, spec.tpm, spec.parallel
        if rpm is None and tpm is None and parallel is None:
            continue
        if (rpm or 0) < 0 or (tpm or 0) < 0 or (parallel or 0) < 0:
            raise ValueError(f"{spec.scope}: limits must be >= 0 or None, got rpm={rpm!r} tpm={tpm!r} "
                             f"parallel={parallel!r}")
        old = merged.get(spec.scope)
        merged[spec.scope] = spec if old is None else LimitSpec(
            spec.scope, _tighter(old.rpm, spec.rpm), _tighter(old.tpm, spec.tpm), _tighter(old.parallel, spec.parallel))
    return Limits(merged.values())


def _tighter(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def budget_admits(spend: float, reserved: float, max_budget: float) -> bool:
    """The budget admission rule (see the module docstring)."""
    return spend + reserved < max_budget - BUDGET_EPS


def rate_admits(used: int, amount: int, limit: int) -> bool:
    """The rate admission rule: room for `amount` more, and the window not already full."""
    return used < limit and used + amount <= limit
