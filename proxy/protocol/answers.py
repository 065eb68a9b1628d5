"""What the admin, spend and health routes answer, in LiteLLM's shapes (its field names; times
as ISO 8601 with their offset). FastAPI checks each answer against these and /openapi.json
describes them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .admin import KeyType, TeamRole, UserRole
from .fields import Answer, Timestamp


class _Limits(Answer):
    models: list[str]
    rpm_limit: int | None
    tpm_limit: int | None
    max_parallel_requests: int | None
    max_budget: float | None
    budget_duration: str | None
    budget_reset_at: Timestamp | None = Field(description="when the current budget window ends")
    spend: float = Field(description="USD spent in the current budget window")
    metadata: dict[str, Any]
    blocked: bool
    created_at: Timestamp
    updated_at: Timestamp


class KeyInfo(_Limits):
    token: str = Field(description="the key's SHA-256 hash: how admin routes name it")
    key_name: str = Field(description="display form, e.g. 'sk-...abcd'")
    id: str
    key_alias: str | None
    key_type: KeyType
    user_id: str | None
    team_id: str | None
    aliases: dict[str, str]
    model_rpm_limit: dict[str, int]
    model_tpm_limit: dict[str, int]
    expires: Timestamp | None
    last_used_at: Timestamp | None
    previous_valid_until: Timestamp | None = Field(description="the old secret works until then (after a rotation)")


class NewKey(KeyInfo):
    key: str = Field(description="the raw key: shown in this answer only")
    token_id: str = Field(description="the key's hash, as `token` (LiteLLM's name in this answer)")


class KeyInfoAnswer(Answer):
    key: str = Field(description="the key's hash")
    info: KeyInfo


class KeyList(Answer):
    keys: list[KeyInfo] | list[str] = Field(description="hashes, or whole records with return_full_object=true")
    total_count: int
    current_page: int
    total_pages: int


class DeletedKeys(Answer):
    deleted_keys: list[str] = Field(description="hashes of the deleted keys")


class TeamMemberInfo(Answer):
    """One of a team's `members_with_roles`."""

    role: TeamRole
    user_id: str
    user_email: str | None


class TeamMembership(Answer):
    """A member's budget within a team."""

    team_id: str
    user_id: str
    role: TeamRole
    max_budget_in_team: float | None
    spend: float = Field(description="USD spent by the member's keys of this team")


class TeamInfo(_Limits):
    team_id: str
    team_alias: str | None
    organization_id: str | None
    members_with_roles: list[TeamMemberInfo]


class TeamMemberUpdated(Answer):
    team_id: str
    user_id: str
    user_email: str | None
    role: TeamRole
    max_budget_in_team: float | None


class OrganizationInfo(_Limits):
    organization_id: str
    organization_alias: str | None


class OrganizationWithTeams(OrganizationInfo):
    teams: list[TeamInfo]


class UserInfo(_Limits):
    user_id: str
    user_email: str | None
    user_role: UserRole
    team_id: str | None


class TeamMemberAdded(TeamInfo):
    updated_users: list[UserInfo]
    updated_team_memberships: list[TeamMembership]


class NewUser(UserInfo):
    key: str | None = Field(default=None, description="the raw key made with the user (auto_create_key)")
    token: str | None = Field(default=None, description="that key's hash")
    expires: Timestamp | None = Field(default=None, description="that key's expiry")
    key_alias: str | None = Field(default=None, description="that key's alias")


class TeamInfoAnswer(Answer):
    team_id: str
    team_info: TeamInfo
    keys: list[KeyInfo]
    team_memberships: list[TeamMembership]


class UserInfoAnswer(Answer):
    user_id: str
    user_info: UserInfo
    keys: list[KeyInfo]
    teams: list[TeamInfo] = Field(description="the teams the user is a member of (and its own team_id's)")


class TeamList(Answer):
    teams: list[TeamInfo]
    total_count: int
    current_page: int
    total_pages: int


class UserList(Answer):
    users: list[UserInfo]
    total_count: int
    current_page: int
    total_pages: int


class DeletedTeams(Answer):
    deleted_teams: list[str]


class DeletedUsers(Answer):
    deleted_users: list[str]


class SpendLog(Answer):
    request_id: str
    created_at: str = Field(description="ISO 8601")
    model: str
    route: str
    status: int
    key_hash: str | None
    user_id: str | None
    team_id: str | None
    deployment: str | None
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost: float
    latency_ms: float
    ttft_ms: float | None
    error_type: str | None
    streamed: bool
    response_id: str | None = Field(description="the answer's own id (chatcmpl-…), LiteLLM's request_id")
    cache_read_tokens: int = Field(description="of prompt_tokens, read from the upstream's prompt cache")
    cache_creation_tokens: int = Field(description="of prompt_tokens, written to the upstream's prompt cache")


class LiteLLMSpendLog(Answer):
    """One row of /spend/logs in LiteLLM's shape (its default answer is a list of these)."""

    request_id: str = Field(description="the answer's own id (chatcmpl-…) as LiteLLM records it; the "
                            "gateway's id (x-request-id) for a request that got no answer")
    call_type: str = Field(description="acompletion, atext_completion or aembedding")
    api_key: str = Field(description="the key's hash ('' for the master key or a JWT)")
    spend: float
    total_tokens: int
    prompt_tokens: int
    completion_tokens: int
    startTime: str
    endTime: str
    model: str
    model_id: str | None = Field(description="the deployment that served it")
    user: str = Field(description="the key's user_id ('' if none)")
    team_id: str | None
    metadata: dict[str, Any] = Field(description="status, error_type, streamed, ttft_ms, route, x_request_id, "
                                              "cache_read_tokens, cache_creation_tokens")


class KeyModelSpend(Answer):
    """One (key, model) of a team's day in /global/spend/report."""

    model: str
    spend: float
    total_tokens: int
    api_key: str = Field(description="the key's hash ('' for the master key or a JWT)")


class TeamDaySpend(Answer):
    team_name: str = Field(description="the team's alias, else its id; 'Unassigned Team' for keys without one")
    total_spend: float
    metadata: list[KeyModelSpend]


class DaySpend(Answer):
    """LiteLLM's /global/spend/report row (group_by=team): one UTC day."""

    group_by_day: str = Field(description="the day's start, ISO 8601 (`2024-04-30T00:00:00+00:00`)")
    teams: list[TeamDaySpend]


class ModelSpend(Answer):
    model: str
    total_cost: float
    total_input_tokens: int
    total_output_tokens: int


class KeySpend(Answer):
    """LiteLLM's /global/spend/report row for one key (with api_key, internal_user_id or group_by=api_key)."""

    api_key: str = Field(description="the key's hash ('' for the master key or a JWT)")
    total_cost: float
    total_input_tokens: int
    total_output_tokens: int
    model_details: list[ModelSpend]


class SpendLogs(Answer):
    data: list[SpendLog]
    page: int
    size: int


class GlobalSpend(Answer):
    spend: float
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    requests: int


class UsageGroup(Answer):
    group: str | None = Field(description="a UTC day (YYYY-MM-DD), a model, or a key hash (null: no virtual key)")
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost: float
    label: str | None = Field(default=None, description="by key: the key's alias, else its display prefix")


class SpendReport(Answer):
    by: str
    data: list[UsageGroup]


class RouteInfo(Answer):
    path: str
    methods: list[str]
    name: str
    endpoint: str = Field(description="the function (or dialect) that serves it")


class Routes(Answer):
    routes: list[RouteInfo]


class Liveliness(Answer):
    status: str


class LocalModel(Answer):
    """A local (llama.cpp) model's worker; the fields after `state` appear where they apply."""

    state: Literal["loading", "ready", "restarting", "failed", "stopped"]
    pid: int | None = None
    restarts: int | None = None
    consecutive_crashes: int | None = None
    last_crash: str | None = Field(default=None, description="how the last worker died, with its last stderr lines")
    code: str | None = None
    error: str | None = None
    retry_in_s: float | None = None


class Readiness(Answer):
    status: str = Field(description="'ready' or 'not ready' (then with status 503)")
    db: str
    keystile_version: str = Field(description="this gateway's version (LiteLLM answers `litellm_version`)")
    litellm_version: str | None = Field(description="the version of the litellm library Keystile runs its "
                                        "`litellm` providers with (None when it is not installed)")
    local_models: dict[str, LocalModel] = Field(description="by local deployment id")


class Restarted(Answer):
    model: str
    restarted: list[str] = Field(description="deployment ids started again")
    local_models: dict[str, LocalModel]


class DeploymentHealth(Answer):
    model: str = Field(description="the deployment's `litellm_params.model`, as LiteLLM names it")
    model_name: str
    id: str
    upstream: str
    in_flight: int
    cooling_down: bool
    cooldown_remaining_s: float
    last_error: str | None
    local_model: LocalModel | None = Field(default=None, description="local deployments only")


class Health(Answer):
    healthy_endpoints: list[DeploymentHealth]
    unhealthy_endpoints: list[DeploymentHealth]
    healthy_count: int
    unhealthy_count: int
