"""Rate limits, parallel-request limits and budgets: one atomic admission per request.

    limiter = make_limiter(settings.redis_url)            # in lifespan; `await limiter.aclose()` on shutdown
    lease = await limiter.acquire(limits, budgets, tokens=estimate, max_cost=max_cost)  # or LimitExceeded
    try: ...relay...
    finally: await limiter.release(lease, tokens_used=actual, cost=actual_cost)

See base.py for the semantics, windows.py for windows, redis_limiter.py for Redis and its fallback.
"""

from __future__ import annotations

from ..domain import LimitExceeded
from .base import BudgetSpec, Counts, Lease, Limiter, LimitSpec
from .local import LocalLimiter
from .redis_limiter import RedisLimiter, connect
from .specs import budget_spec, request_limits
from .windows import WINDOW_S, format_reset, next_reset, parse_duration

__all__ = [
    "WINDOW_S", "BudgetSpec", "Counts", "Lease", "LimitExceeded", "LimitSpec", "Limiter", "LocalLimiter",
    "RedisLimiter", "budget_spec", "format_reset", "make_limiter", "next_reset", "parse_duration",
    "request_limits",
]


def make_limiter(redis_url: str | None, *, prefix: str = "keystile", lease_ttl: float = 900.0) -> Limiter:
    """The in-process limiter without `redis_url`; else the Redis one (with in-process fallback).

    Creates no connection yet (the first acquire connects), so it is safe to call anywhere;
    `lease_ttl` should exceed the longest request (parallel slots of dead instances free after it).
    """
    if not redis_url:
        return LocalLimiter()
    return RedisLimiter(connect(redis_url), prefix=prefix, lease_ttl=lease_ttl)
