"""Model name -> deployments: the order to try them in, retries, fallbacks and cooldowns.

`attempts(name)` is every attempt one request may make: its deployments (weighted shuffle or least
busy; those cooling down last), again for each retry, then the configured fallback model names.
The caller (proxy/core/attempts.py) makes them in that order, moving on after a retriable failure,
and reports each failure with `failed`, which cools a deployment down after too many.

A name no group has may match a wildcard entry (`openai/*`, `*`; backends/wildcards.py): `group`
makes its deployments on first use. Deployments and wildcard entries are added and removed at run
time (POST /model/new, /api/v1/deploy); requests in flight keep the deployment they started on.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import errors
from .base import Backend
from .wildcards import Concrete, WildcardEntry


@dataclass(eq=False)
class Deployment:
    model_name: str
    id: str
    backend: Backend
    upstream: str
    weight: float = 1.0
    rpm: int | None = None
    tpm: int | None = None
    input_cost_per_token: float | None = None
    output_cost_per_token: float | None = None
    in_flight: int = 0
    cooldown_until: float = 0.0
    failures: deque[float] = field(default_factory=deque)
    last_error: str | None = None
    errors: int = 0  # retriable failures ever (`failed`), for the metrics
    cooldowns: int = 0  # cooldowns this process started

    def state(self, now: float) -> dict[str, Any]:
        return {
            "model_name": self.model_name, "id": self.id, "upstream": self.upstream,
            "in_flight": self.in_flight, "cooling_down": self.cooldown_until > now,
            "cooldown_remaining_s": round(max(0.0, self.cooldown_until - now), 1), "last_error": self.last_error,
        }


@dataclass
class RouterPolicy:
    num_retries: int = 2
    allowed_fails: int = 3
    cooldown_time: float = 30.0
    fallbacks: dict[str, list[str]] = field(default_factory=dict)
    strategy: str = "simple-shuffle"


class Router:
    def __init__(self, deployments: list[Deployment], policy: RouterPolicy,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None,
                 wildcards: list[WildcardEntry] | None = None):
        self.policy = policy
        self._clock = clock
        self._rng = rng or random.Random()
        self.groups: dict[str, list[Deployment]] = {}
        self._by_id: dict[str, Deployment] = {}
        for d in deployments:
            self.add(d)
        self.wildcards: list[WildcardEntry] = []
        self._matched = Concrete()
        for entry in wildcards or ():
            self.add_wildcard(entry)
        # Told of every cooldown this router starts (proxy/cooldowns.py shares them through Redis).
        self.on_cooldown: Callable[[Deployment, float], None] | None = None

    def add(self, d: Deployment) -> None:
        """A deployment made at run time (POST /model/new, /api/v1/deploy) joins its model's group."""
        self.groups.setdefault(d.model_name, []).append(d)
        self._by_id[d.id] = d

    def remove(self, d: Deployment) -> None:
        """A deployment stopped at run time leaves; a model with none left is no longer served."""
        group = self.groups.get(d.model_name, [])
        if d in group:
            group.remove(d)
        if not group:
            self.groups.pop(d.model_name, None)
        if self._by_id.get(d.id) is d:
            del self._by_id[d.id]

    def add_wildcard(self, entry: WildcardEntry) -> None:
        self.wildcards.append(entry)
        self.wildcards.sort(key=lambda e: -e.specificity)  # stable: equal ones keep model_list order
        self._matched.clear()

    def remove_wildcard(self, entry: WildcardEntry) -> None:
        if entry in self.wildcards:
            self.wildcards.remove(entry)
        self._matched.clear()

    def names(self) -> list[str]:
        """Served names: every group's, then the wildcard patterns (as LiteLLM lists them)."""
        return list(self.groups) + list(dict.fromkeys(e.pattern for e in self.wildcards))

    def ids(self) -> set[str]:
        return set(self._by_id) | {e.id for e in self.wildcards}

    def deployments(self) -> list[Deployment]:
        return [d for group in self.groups.values() for d in group]

    def group(self, name: str) -> list[Deployment] | None:
        """The deployments serving `name`: its group, else those of the most specific wildcard
        entries it matches (made on first use), else None."""
        group = self.groups.get(name)
        if group is not None or not self.wildcards:
            return group
        group = self._matched.get(name)
        if group is not None:
            return group
        found: list[Deployment] = []
        best = -1
        for entry in self.wildcards:  # most specific first: only the best-matching entries serve
            if found and entry.specificity < best:
                break
            upstream = entry.upstream(name)
            if upstream is None:
                continue
            d = Deployment(model_name=name, id=f"{entry.id}:{name}", backend=entry.make(upstream, name),
                           upstream=upstream, weight=entry.weight, rpm=entry.rpm, tpm=entry.tpm,
                           input_cost_per_token=entry.input_cost_per_token,
                           output_cost_per_token=entry.output_cost_per_token)
            best = entry.specificity
            found.append(d)
        return self._matched.put(name, found) if found else None

    def __contains__(self, name: str) -> bool:
        return name in self.groups or (bool(self.wildcards) and self.group(name) is not None)

    def _order(self, name: str) -> list[Deployment]:
        """Deployments of one model in the order to try them: healthy first, cooling down last."""
        now = self._clock()
        group = self.groups.get(name) or self.group(name) or []
        ready = [d for d in group if d.cooldown_until <= now]
        cooling = sorted((d for d in group if d.cooldown_until > now), key=lambda d: d.cooldown_until)
        if self.policy.strategy == "least-busy":
            ready.sort(key=lambda d: d.in_flight)
        elif len(ready) > 1:
            # Weighted shuffle: Efraimidis-Spirakis keys, larger first.
            ready.sort(key=lambda d: self._rng.random() ** (1.0 / d.weight), reverse=True)
        return ready + cooling

    def attempts(self, name: str) -> list[Deployment]:
        """Every attempt for a request: retries over this model's deployments, then fallbacks."""
        order = self._order(name)
        if not order:
            raise errors.ModelRemoved(f"model '{name}' is no longer served")
        attempts = [order[i % len(order)] for i in range(1 + self.policy.num_retries)]
        for fallback in self.policy.fallbacks.get(name, []):
            if fallback != name and fallback in self:
                attempts.extend(self._order(fallback)[:1])
        return attempts

    def failed(self, d: Deployment, exc: errors.BackendError) -> None:
        """`d` failed with a retriable error: one more failure in its last minute, and a cooldown
        once there are more than `allowed_fails`."""
        now = self._clock()
        d.last_error = exc.message
        d.errors += 1
        d.failures.append(now)
        while d.failures and d.failures[0] < now - 60:
            d.failures.popleft()
        if len(d.failures) > self.policy.allowed_fails:
            d.cooldown_until = now + self.policy.cooldown_time
            d.cooldowns += 1
            d.failures.clear()
            if self.on_cooldown is not None:
                self.on_cooldown(d, self.policy.cooldown_time)

    def cool_down(self, deployment_id: str, seconds: float, reason: str | None = None) -> bool:
        """Skip a deployment for `seconds` because another process cooled it down; False if unknown."""
        d = self._by_id.get(deployment_id)
        if d is None:
            return False
        d.cooldown_until = max(d.cooldown_until, self._clock() + seconds)
        d.failures.clear()
        if reason:
            d.last_error = reason
        return True
