"""Plain values every layer shares: who calls (Principal and the Scopes it belongs to), what limits
a call (LimitSpec, BudgetSpec, a principal's LimitPlan per model), a refused key (Refusal), a
refused call (LimitExceeded) and what a call used (UsageRecord).

This module imports nothing of the server: auth builds these values, limits and accounting take
them, the core passes them along, and only proxy/errors.py turns a refusal into an HTTP answer."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class Scope:
    """Limits and budget of one key, user, team, team membership or organization. `name` is e.g.
    `key:<hash>`, `user:<id>`, `team:<id>`, `member:<team_id>:<user_id>`, `org:<id>`."""

    name: str
    rpm: int | None = None
    tpm: int | None = None
    parallel: int | None = None
    max_budget: float | None = None
    budget_duration: str | None = None
    budget_reset_at: datetime | None = None
    spend: float = 0.0


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """Rate and concurrency limits of one scope. None means "no such limit"; 0 blocks everything.

    `scope` names the counters: `key:<hash>`, `user:<id>`, `team:<id>`, `key:<hash>:model:<model>`,
    `deployment:<id>`. Two specs with the same scope in one request are merged (tightest wins).
    """

    scope: str
    rpm: int | None = None
    tpm: int | None = None
    parallel: int | None = None

    @property
    def counted(self) -> bool:
        """Whether this scope has a request/token counter (it has an rpm or a tpm limit)."""
        return self.rpm is not None or self.tpm is not None


@dataclass(frozen=True, slots=True)
class BudgetSpec:
    """A spend limit of one scope. `window_reset_at` (epoch seconds) identifies the budget window
    and is when it resets; None is a lifetime budget. `seed_spend` is the spend the database has
    for that window, used only when the limiter has no counter for (scope, window) yet."""

    scope: str
    max_budget: float
    window_reset_at: float | None = None
    seed_spend: float = 0.0


class Limits(tuple[LimitSpec, ...]):
    """LimitSpecs as the limiter's `normalize` leaves them: validated, one per scope, none empty.
    `normalize` hands them back as they are, so limits made once (per caller and model, see
    limits/specs.py) are not merged again on every request."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class LimitPlan:
    """What the limiter needs of one principal for one model, apart from the budget windows (which
    move with the clock): its merged rate limits and the scopes that have a budget."""

    limits: Limits
    budgeted: tuple[Scope, ...]


@dataclass(frozen=True, slots=True)
class Principal:
    is_master: bool = False
    is_admin: bool = False
    key_id: str | None = None
    key_hash: str | None = None
    key_alias: str | None = None
    key_name: str | None = None  # the key's display form, `sk-...abcd` (logs may show it; never the key)
    user_id: str | None = None
    team_id: str | None = None
    organization_id: str | None = None  # the team's
    user_role: str | None = None  # the user's (proxy_admin, internal_user, internal_user_viewer)
    key_type: str = "default"
    # Allowed public model names (the tightest of key, user and team, access groups expanded,
    # proxy/models/access.py); None means every model. Names with `*` are patterns (`openai/*`),
    # also listed in `model_patterns`.
    models: frozenset[str] | None = None
    model_patterns: tuple[str, ...] = ()
    aliases: dict[str, str] = field(default_factory=dict)
    expires: datetime | None = None
    scopes: tuple[Scope, ...] = ()
    model_rpm: dict[str, int] = field(default_factory=dict)
    model_tpm: dict[str, int] = field(default_factory=dict)
    # Per model, worked out on the first request for it (limits/specs.py): a principal is
    # immutable and lives until its cache entry is reloaded.
    limit_plans: dict[str, LimitPlan] = field(default_factory=dict, init=False, compare=False, repr=False)

    @property
    def may_administer(self) -> bool:
        return self.is_master or (self.is_admin and self.key_type != "llm_api")

    @property
    def may_self_serve(self) -> bool:
        """An `internal_user`'s key may create, list, read and delete its user's own keys (LiteLLM's
        self-serve), within its own limits; `internal_user_viewer` and llm_api keys may not."""
        return self.may_administer or (self.key_hash is not None and self.user_id is not None
                                       and self.user_role == "internal_user" and self.key_type != "llm_api")

    @property
    def may_infer(self) -> bool:
        """Management keys may use the admin routes only."""
        return self.key_type != "management"

    def may_use(self, model: str) -> bool:
        if self.models is None or model in self.models:
            return True
        return any(fnmatchcase(model, p) for p in self.model_patterns)

    def resolve(self, model: str) -> str:
        return self.aliases.get(model, model)


MASTER = Principal(is_master=True, key_alias="master")


@dataclass(frozen=True, slots=True)
class Refusal:
    """A key that exists but may not be used (blocked key, user or team); `reason` is safe to show
    its holder. Cached like a principal, so a blocked key costs no database round trip either."""

    reason: str


LimitKind = Literal["rpm", "tpm", "parallel", "budget"]


class LimitExceeded(Exception):
    """A call refused by one limit (proxy/errors.py makes it a 429). `scope` is e.g. `key:<hash>`
    or `deployment:<id>`, `kind` is rpm|tpm|parallel|budget, `limit` and `remaining` are in the
    kind's unit (requests, tokens, requests in flight, currency), `reset_s` is seconds until the
    limit resets (None: a lifetime budget, which never does)."""

    def __init__(self, message: str, *, scope: str, kind: LimitKind, limit: float, remaining: float,
                 reset_s: float | None):
        super().__init__(message)
        self.message = message
        self.scope = scope
        self.kind: LimitKind = kind
        self.limit = limit
        self.remaining = remaining
        self.reset_s = reset_s

    @property
    def scope_type(self) -> str:
        """`key`, `user`, `team`, `member`, `org`, `model` (a key's per-model limit) or `deployment`."""
        return "model" if ":model:" in self.scope else self.scope.split(":", 1)[0]


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageRecord:
    """What one request used and cost. Field names are the spend_logs column names.

    - `request_id`: unique per request; the idempotency key (a record written twice is stored once).
    - `created_at`: when the request started; timezone-aware (naive values are taken as UTC).
    - `key_hash` / `user_id` / `team_id`: the caller; their spend grows by `cost` when written.
    - `model`: the public model name the caller asked for; `deployment`: the deployment id that served it.
    - `route`: e.g. `/v1/chat/completions`.
    - `cost`: in USD (from `PriceMap.cost`); `latency_ms`: until the last byte;
      `ttft_ms`: time to first token, streams only.
    - `status`: the HTTP status returned; `error_type`: the error envelope's `type` when it failed.
    - `response_id`: the answer's own `id` (`chatcmpl-…`, `msg_…`) when it had one; LiteLLM's
      /spend/logs calls this `request_id`.
    - `cache_read_tokens` / `cache_creation_tokens`: of `prompt_tokens`, those the upstream read from
      / wrote to its prompt cache (as it reported them; 0 when it did not).
    """

    request_id: str
    created_at: datetime
    model: str
    route: str
    status: int
    key_hash: str | None = None
    user_id: str | None = None
    team_id: str | None = None
    deployment: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    error_type: str | None = None
    streamed: bool = False
    response_id: str | None = None
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: `created_at` as ISO 8601, plus `total_tokens`."""
        out = asdict(self)
        out["created_at"] = self.created_at.isoformat()
        out["total_tokens"] = self.total_tokens
        return out
