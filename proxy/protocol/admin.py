"""Admin API request bodies, with LiteLLM's field names so its clients and scripts work. Unknown
fields are refused (400 naming them); every value is bounded to what its column holds
(see fields.py), so a body is either applied whole or refused before anything is written."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from .fields import (LIST_MAX, Count, Duration, Id, Instant, KeyRef, Metadata, ModelName, Models, Money, Name,
                     Strict, text)

UserRole = Literal["proxy_admin", "internal_user", "internal_user_viewer"]
KeyType = Literal["default", "llm_api", "management"]
Email = Annotated[str, text(320)]


class _Limits(Strict):
    models: Models | None = Field(default=None, description="allowed models; empty means every model")
    rpm_limit: Count | None = None
    tpm_limit: Count | None = None
    max_parallel_requests: Count | None = None
    max_budget: Money | None = Field(default=None, description="USD per budget_duration (or ever)")
    budget_duration: Duration | None = None
    metadata: Metadata | None = None
    blocked: bool | None = None


class _KeyOnly(Strict):
    """What only a key has (LiteLLM's /user/new takes these too, for the key it makes)."""

    key_alias: Name | None = None
    aliases: dict[ModelName, ModelName] | None = Field(default=None, max_length=LIST_MAX,
                                                       description="key-specific model names: alias -> model")
    model_rpm_limit: dict[ModelName, Count] | None = Field(default=None, max_length=LIST_MAX)
    model_tpm_limit: dict[ModelName, Count] | None = Field(default=None, max_length=LIST_MAX)
    duration: Duration | None = Field(default=None, description="expires this long after now, e.g. '90d'")
    expires: Instant | None = Field(default=None, description="absolute expiry time (ISO 8601)")
    key_type: KeyType | None = Field(default=None, description="llm_api: inference only; management: admin only")


KEY_ONLY = frozenset(_KeyOnly.model_fields)


class KeyFields(_Limits, _KeyOnly):
    user_id: Id | None = Field(default=None, description="a user without a row gets one (as in LiteLLM)")
    team_id: Id | None = None


class KeyGenerate(KeyFields):
    pass


class KeyUpdate(KeyFields):
    key: KeyRef
    spend: Money | None = Field(default=None, description="set the spend (e.g. 0 to reset it)")


class KeyDelete(Strict):
    keys: list[KeyRef] | None = Field(default=None, max_length=LIST_MAX)
    key_aliases: list[Name] | None = Field(default=None, max_length=LIST_MAX)


class KeyBlock(Strict):
    key: KeyRef


class KeyRegenerate(Strict):
    key: KeyRef | None = Field(default=None, description="required unless the key is in the path")
    grace_period: Duration | None = Field(default=None, description="the old secret keeps working this long")


class TeamFields(_Limits):
    team_alias: Name | None = None
    organization_id: Id | None = Field(default=None, description="the team's models and budget must fit within "
                                                                 "its organization's")


TeamRole = Literal["admin", "user"]


class _UserRef(Strict):
    """A user by user_id or user_email."""

    user_id: Id | None = None
    user_email: Email | None = None

    @model_validator(mode="after")
    def _named(self) -> "_UserRef":
        if self.user_id is None and self.user_email is None:
            raise ValueError("send user_id or user_email")
        return self


class Member(_UserRef):
    """A team member (a user that does not exist yet is made)."""

    role: TeamRole = Field(default="user", description="admin: may manage the team's members and keys")


class TeamNew(TeamFields):
    team_id: Id | None = None
    members_with_roles: list[Member] | None = Field(default=None, max_length=LIST_MAX)


class TeamMemberAdd(Strict):
    team_id: Id
    member: list[Member] = Field(min_length=1, max_length=LIST_MAX,
                                 description="a list of members, or one member (an object) as LiteLLM's docs send it")
    max_budget_in_team: Money | None = Field(default=None, description="caps the member's keys of this team (USD)")

    @field_validator("member", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, dict) else value


class MemberRef(_UserRef):
    team_id: Id


class TeamMemberUpdate(MemberRef):
    role: TeamRole | None = None
    max_budget_in_team: Money | None = Field(default=None, description="null removes the member's cap")


class TeamMemberDelete(MemberRef):
    pass


class TeamUpdate(TeamFields):
    team_id: Id


class TeamDelete(Strict):
    team_ids: list[Id] = Field(min_length=1, max_length=LIST_MAX)


class UserFields(_Limits):
    user_email: Email | None = None
    user_role: UserRole | None = None
    team_id: Id | None = None


class UserNew(UserFields, _KeyOnly):
    """LiteLLM's shape: a user's fields plus a /key/generate body for the key made with it (the
    limits, budget and models apply to the user; metadata to both)."""

    user_id: Id | None = None
    auto_create_key: bool = Field(default=True, description="also create a key for the user (LiteLLM's default)")


class UserUpdate(UserFields):
    user_id: Id
    spend: Money | None = Field(default=None, description="set the spend (e.g. 0 to reset it)")


class UserDelete(Strict):
    user_ids: list[Id] = Field(min_length=1, max_length=LIST_MAX)


class OrganizationFields(_Limits):
    organization_alias: Name | None = None


class OrganizationNew(OrganizationFields):
    organization_id: Id | None = None


class OrganizationUpdate(OrganizationFields):
    organization_id: Id


class OrganizationDelete(Strict):
    organization_ids: list[Id] = Field(min_length=1, max_length=LIST_MAX)


class HealthRestart(Strict):
    model: ModelName = Field(description="a public model name; its crashed or failed local deployments start again now")
