"""The refusal: a 429 naming the limit that refused, with the numbers and a Retry-After header."""

from __future__ import annotations

import math
from typing import Literal

from ..errors import RateLimited
from .base import BudgetSpec, LimitSpec
from .windows import format_reset

Kind = Literal["rpm", "tpm", "parallel", "budget"]

PARALLEL_RETRY_S = 1.0
"""A parallel slot frees when some request finishes; clients are told to retry after a second."""


class LimitExceeded(RateLimited):
    """A request refused by one limit. `scope` is e.g. `key:<hash>` or `deployment:<id>`, `kind`
    is rpm|tpm|parallel|budget, `limit` and `remaining` are in the kind's unit (requests, tokens,
    requests in flight, currency), `reset_s` is seconds until the limit resets (None: a lifetime
    budget, which never does). Budgets use code `budget_exceeded`, the rest `rate_limit_exceeded`;
    `headers` carries `Retry-After` (whole seconds, at least 1) whenever a reset is known."""

    def __init__(self, message: str, *, scope: str, kind: Kind, limit: float, remaining: float,
                 reset_s: float | None):
        headers = {"Retry-After": str(max(1, math.ceil(reset_s)))} if reset_s is not None else {}
        if kind in ("rpm", "tpm") and reset_s is not None:  # OpenAI's trio for the limit that refused
            unit = "requests" if kind == "rpm" else "tokens"
            headers.update({f"x-ratelimit-limit-{unit}": "%d" % limit,
                            f"x-ratelimit-remaining-{unit}": "%d" % remaining,
                            f"x-ratelimit-reset-{unit}": format_reset(reset_s)})
        super().__init__(message, code="budget_exceeded" if kind == "budget" else "rate_limit_exceeded",
                         headers=headers)
        self.scope = scope
        self.kind: Kind = kind
        self.limit = limit
        self.remaining = remaining
        self.reset_s = reset_s

    @property
    def scope_type(self) -> str:
        """`key`, `user`, `team`, `model` (a key's per-model limit) or `deployment`."""
        return "model" if ":model:" in self.scope else self.scope.split(":", 1)[0]


def display(scope: str) -> str:
    """A scope as shown to the caller: long key hashes shortened (`key:1a2b3c4d…`)."""
    parts = scope.split(":")
    for i in range(1, len(parts)):
        if parts[i - 1] == "key" and len(parts[i]) > 12:
            parts[i] = parts[i][:8] + "…"
    return ":".join(parts)


def rate_refused(spec: LimitSpec, kind: Kind, used: int, tokens: int, reset_s: float) -> LimitExceeded:
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


def budget_refused(budget: BudgetSpec, spend: float, reserved: float, max_cost: float, now: float) -> LimitExceeded:
    """Refusal by a budget; `spend` and `reserved` are the window's counters before this request."""
    reset_s = None if budget.window_reset_at is None else max(0.0, budget.window_reset_at - now)
    remaining = max(0.0, budget.max_budget - spend - reserved)
    when = "never resets" if reset_s is None else f"resets in {format_reset(reset_s)}"
    return LimitExceeded(
        f"budget exceeded for {display(budget.scope)}: max_budget {budget.max_budget:.4f}, spent {spend:.4f}, "
        f"in flight {reserved:.4f}, remaining {remaining:.4f}, this request may cost up to {max_cost:.4f} ({when})",
        scope=budget.scope, kind="budget", limit=budget.max_budget, remaining=remaining, reset_s=reset_s)
