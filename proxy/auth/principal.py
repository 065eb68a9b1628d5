"""The authenticated caller, as the rest of the request path sees it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Principal:
    is_master: bool = False
    key_hash: str | None = None
    key_alias: str | None = None
    user_id: str | None = None
    team_id: str | None = None
    key_type: str = "default"
    # Allowed public model names; None means every model.
    models: frozenset[str] | None = None
    aliases: dict[str, str] = field(default_factory=dict)
    limits: Any = None

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
