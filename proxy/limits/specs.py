"""From an authenticated caller to the LimitSpecs and BudgetSpecs of a request.

Budget windows: a scope with `budget_duration` uses the database's `budget_reset_at` as its window
while that is in the future, seeded with the database's `spend`. Once it has passed (the database
reset job has not run yet), the window rolls forward by whole durations from it and starts from 0;
with no `budget_reset_at` at all, windows are aligned to the Unix epoch (see next_reset).
"""

from __future__ import annotations

from ..domain import BudgetSpec, LimitPlan, Limits, LimitSpec, Principal, Scope
from .base import merge_limits
from .windows import next_reset, parse_duration

NO_LIMITS = Limits()
MAX_PLANS = 256


def request_limits(principal: Principal, model: str, *, now: float) -> tuple[Limits, list[BudgetSpec]]:
    """Limits of key, user and team and the key's per-model limits for `model` (merged, see
    base.normalize), and the budgets of those scopes at `now`.

    Everything but the budget windows is fixed for a principal, so it is worked out once per model
    and kept on the principal (for at most MAX_PLANS models: wildcard entries serve any name).
    A principal without limits of its own (the master key, a JWT) shares one empty answer."""
    if not principal.scopes and not principal.model_rpm and not principal.model_tpm:
        return NO_LIMITS, []
    plan = principal.limit_plans.get(model)
    if plan is None:
        plan = _plan(principal, model)
        if len(principal.limit_plans) < MAX_PLANS:  # names matched by wildcards are not a small set
            principal.limit_plans[model] = plan
    budgeted = plan.budgeted
    return plan.limits, [budget_spec(s, now) for s in budgeted] if budgeted else []  # type: ignore[misc]


def _plan(principal: Principal, model: str) -> LimitPlan:
    limits = [LimitSpec(s.name, s.rpm, s.tpm, s.parallel) for s in principal.scopes]
    rpm, tpm = principal.model_rpm.get(model), principal.model_tpm.get(model)
    if principal.key_hash and (rpm is not None or tpm is not None):
        limits.append(LimitSpec(f"key:{principal.key_hash}:model:{model}", rpm=rpm, tpm=tpm))
    return LimitPlan(merge_limits(limits), tuple(s for s in principal.scopes if s.max_budget is not None))


def budget_spec(scope: Scope, now: float) -> BudgetSpec | None:
    """The budget window of one scope at `now` (None when the scope has no max_budget)."""
    if scope.max_budget is None:
        return None
    if not scope.budget_duration:
        return BudgetSpec(scope.name, scope.max_budget, None, scope.spend)
    stored = scope.budget_reset_at.timestamp() if scope.budget_reset_at is not None else None
    if stored is not None and stored > now:
        return BudgetSpec(scope.name, scope.max_budget, stored, scope.spend)
    return BudgetSpec(scope.name, scope.max_budget, next_reset(parse_duration(scope.budget_duration), now,
                                                                anchor=stored), 0.0)
