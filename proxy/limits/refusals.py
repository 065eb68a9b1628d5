"""Refusals: the LimitExceeded (domain.py) naming the limit that refused, with its numbers.
proxy/errors.py turns it into a 429 with a Retry-After header."""

from __future__ import annotations

from ..domain import BudgetSpec, LimitExceeded, LimitKind, LimitSpec
from .windows import format_reset

BUDGET_EXCEEDED = "Budget has been exceeded!"
"""LiteLLM's wording for a budget refusal (clients written for LiteLLM look for it)."""
PARALLEL_RETRY_S = 1.0
"""A parallel slot frees when some request finishes; clients are told to retry after a second."""


def display(scope: str) -> str:
    """A scope as shown to the caller: long key hashes shortened (`key:1a2b3c4d…`)."""
    parts = scope.split(":")
    for i in range(1, len(parts)):
        if parts[i - 1] == "key" and len(parts[i]) > 12:
            parts[i] = parts[i][:8] + "…"
    return ":".join(parts)


def rate_refused(spec: LimitSpec, kind: LimitKind, used: int, tokens: int, reset_s: float) -> LimitExceeded:
    """Refusal by an rpm, tpm or parallel limit; `used` is the count before this request."""
    who = display(spec.scope)
    if kind == "rpm":
        limit = spec.rpm or 0
        text = f"{limit} requests per minute"
    elif kind == "tpm":
        limit = spec.tpm or 0
        text = f"{limit} tokens per minute, {used} used, this request reserves {tokens}"
    else:
        limit = spec.parallel or 0
        remaining = max(0, limit - used)
        return LimitExceeded(f"rate limit exceeded for {who}: {limit} parallel requests already in flight",
                             scope=spec.scope, kind=kind, limit=limit, remaining=remaining,
                             reset_s=PARALLEL_RETRY_S)
    remaining = max(0, limit - used)
    return LimitExceeded(
        f"rate limit exceeded for {who}: {text} ({remaining} remaining, resets in {format_reset(reset_s)})",
        scope=spec.scope, kind=kind, limit=limit, remaining=remaining, reset_s=reset_s)


def budget_refused(budget: BudgetSpec, spend: float, reserved: float, now: float) -> LimitExceeded:
    """Refusal by a budget; `spend` and `reserved` are the window's counters before this request.
    The message starts with LiteLLM's words, which its users' clients match on."""
    reset_s = None if budget.window_reset_at is None else max(0.0, budget.window_reset_at - now)
    remaining = max(0.0, budget.max_budget - spend - reserved)
    when = "never resets" if reset_s is None else f"resets in {format_reset(reset_s)}"
    return LimitExceeded(
        f"{BUDGET_EXCEEDED} No budget left for {display(budget.scope)}: max_budget {budget.max_budget:.4f}, "
        f"spent {spend:.4f}, in flight {reserved:.4f}, remaining {remaining:.4f} ({when})",
        scope=budget.scope, kind="budget", limit=budget.max_budget, remaining=remaining, reset_s=reset_s)
