"""One accounted request, shaped like a spend_logs row."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any


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

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: `created_at` as ISO 8601, plus `total_tokens`."""
        out = asdict(self)
        out["created_at"] = self.created_at.isoformat()
        out["total_tokens"] = self.total_tokens
        return out
