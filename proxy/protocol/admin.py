"""Admin API bodies, with LiteLLM's field names so its clients and scripts work. Unknown fields
are rejected (400 naming them); durations are checked here."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ..durations import parse_duration

NonNegInt = Annotated[int, Field(ge=0)]
Money = Annotated[float, Field(ge=0)]


def _duration(value: str) -> str:
    parse_duration(value)  # ValueError names the bad input
    return value


Duration = Annotated[str, AfterValidator(_duration)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Limits(_Strict):
    models: list[str] | None = None
    rpm_limit: NonNegInt | None = None
    tpm_limit: NonNegInt | None = None
    max_parallel_requests: NonNegInt | None = None
    max_budget: Money | None = None
    budget_duration: Duration | None = None
    metadata: dict[str, Any] | None = None
    blocked: bool | None = None


class KeyFields(_Limits):
    key_alias: str | None = Field(default=None, min_length=1, max_length=255)
    user_id: str | None = None
    team_id: str | None = None
    aliases: dict[str, str] | None = None
    model_rpm_limit: dict[str, NonNegInt] | None = None
    model_tpm_limit: dict[str, NonNegInt] | None = None
    duration: Duration | None = Field(default=None, description="expires this long after now, e.g. '90d'")
    expires: datetime | None = Field(default=None, description="absolute expiry time (ISO 8601)")
    key_type: Literal["default", "llm_api", "management"] | None = None


class KeyGenerate(KeyFields):
    pass


class KeyUpdate(KeyFields):
    key: str = Field(min_length=1, description="the key or its hash (token)")


class KeyDelete(_Strict):
    keys: list[str] | None = None
    key_aliases: list[str] | None = None


class KeyRef(_Strict):
    key: str = Field(min_length=1)


class KeyRegenerate(_Strict):
    key: str | None = None
    grace_period: Duration | None = Field(default=None, description="the old secret keeps working this long")


class TeamFields(_Limits):
    team_alias: str | None = Field(default=None, min_length=1, max_length=255)


class TeamNew(TeamFields):
    team_id: str | None = Field(default=None, min_length=1, max_length=64)


class TeamUpdate(TeamFields):
    team_id: str = Field(min_length=1)


class TeamDelete(_Strict):
    team_ids: list[str] = Field(min_length=1)


class UserFields(_Limits):
    user_email: str | None = None
    user_role: Literal["proxy_admin", "internal_user", "internal_user_viewer"] | None = None
    team_id: str | None = None


class UserNew(UserFields):
    user_id: str | None = Field(default=None, min_length=1, max_length=64)
    auto_create_key: bool = True


class UserUpdate(UserFields):
    user_id: str = Field(min_length=1)


class UserDelete(_Strict):
    user_ids: list[str] = Field(min_length=1)
