"""The authenticated caller, as the rest of the request path sees it: who (key, user, team), what it
may use, and the limits and budgets of each scope it belongs to."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..limits.base import Limits


@dataclass(frozen=True, slots=True)
class Scope:
    """Limits and budget of one key, user or team. `name` is e.g. `key:<hash>`, `user:<id>`, `team:<id>`."""

    name: str
    rpm: int | None = None
    tpm: int | None = None
    parallel: int | None = None
    max_budget: float | None = None
    budget_duration: str | None = None
    budget_reset_at: datetime | None = None
    spend: float = 0.0


@dataclass(frozen=True, slots=True)
class Principal:
    is_master: bool = False
    is_admin: bool = False
    key_id: str | None = None
    key_hash: str | None = None
    key_alias: str | None = None
    user_id: str | None = None
    team_id: str | None = None
    key_type: str = "default"
    # Allowed public model names (the tightest of key, user and team); None means every model.
    models: frozenset[str] | None = None
    aliases: dict[str, str] = field(default_factory=dict)
    expires: datetime | None = None
    scopes: tuple[Scope, ...] = ()
    model_rpm: dict[str, int] = field(default_factory=dict)
    model_tpm: dict[str, int] = field(default_factory=dict)
    # What the limiter needs per model, worked out on the first request for it (limits/specs.py):
    # a principal is immutable and lives until its cache entry is reloaded.
    limit_plans: dict[str, tuple[Limits, tuple[Scope, ...]]] = field(default_factory=dict, init=False, compare=False, repr=False)

    @property
    def may_administer(self) -> bool:
        return self.is_master or (self.is_admin and self.key_type != "llm_api")

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models

    def resolve(self, model: str) -> str:
        return self.aliases.get(model, model)


MASTER = Principal(is_master=True, key_alias="master")


def bearer_token(headers) -> str | None:
    """The credential from `Authorization: Bearer`, `api-key` or `x-api-key` (SDK compatibility)."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    return headers.get("api-key") or headers.get("x-api-key")
