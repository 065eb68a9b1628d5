"""Self-service keys (LiteLLM's `internal_user` role): a key of an internal_user may create, list,
read and delete keys of its own user, and a key it creates never has more than it has itself.

Checked here, before anything is written (403 naming the field when a body asks for more):
- owner: `user_id` is the caller's user and `team_id` the caller's team (both filled in when
  absent), so the new key answers to the same user, team, membership and organization budgets;
- `key_type`: default or llm_api (a management key would be an admin key of the user);
- `models`: within the caller's (the intersection of its key's, user's, team's and
  organization's); absent or empty means the caller's;
- `max_budget`: at most what remains of the caller key's budget (and at most the user's
  max_budget); absent means that remainder; a budget_duration other than the caller's is refused;
- `rpm_limit`, `tpm_limit`, `max_parallel_requests`, per-model limits: at most the caller's;
  absent means the caller's;
- `expires`: not after the caller's expiry (absent: the caller's).

Spend of the new key is its own: what several keys of a user spend together is bounded by the
user's budget (and the team's, membership's, organization's), which every key of the user obeys
at admission. Give internal users a user max_budget for a hard cap per person.

Team admins (members with role admin, LiteLLM's `_is_user_team_admin`) may also manage their
team's keys: create a key with that `team_id` for themselves, for a member of the team or for no
user (a service account key of the team), and list, read and delete the team's keys. Such a key
obeys the team's models, limits and budget (and its user's, membership's and organization's) at
admission, so it cannot reach beyond the team; a management key is refused here too."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..db.members import is_team_admin
from ..db.models import Key, TeamMember, User
from ..domain import Principal
from ..errors import Forbidden
from ..protocol.admin import KeyGenerate

LIMITS = ("rpm_limit", "tpm_limit", "max_parallel_requests")


def _refuse(message: str, param: str) -> Forbidden:
    return Forbidden(message, code="self_serve_limit", param=param)


def _at_most(fields: dict[str, Any], name: str, cap: float | None) -> None:
    """Fill `name` with `cap` when absent; refuse a value above it."""
    if cap is None:
        return
    value = fields.get(name)
    if value is None:
        fields[name] = cap
    elif value > cap:
        raise _refuse(f"{name} {value} exceeds this key's own {name} {cap}", name)


def _per_model(fields: dict[str, Any], name: str, own: dict[str, Any]) -> None:
    asked = dict(fields.get(name) or {})
    for model, cap in own.items():
        if model in asked and asked[model] > cap:
            raise _refuse(f"{name}['{model}'] {asked[model]} exceeds this key's own {cap}", name)
        asked.setdefault(model, cap)
    if asked:
        fields[name] = asked


def bounded(caller: Principal, body: KeyGenerate, fields: dict[str, Any], own: Key, user: User | None) -> dict:
    """`fields` of a key the (non-admin) caller creates, held within the caller's own key `own`
    and user `user`; raises Forbidden naming the first field that asks for more."""
    if body.user_id not in (None, caller.user_id):
        raise _refuse("a key may only create keys for its own user", "user_id")
    if body.team_id not in (None, caller.team_id):
        raise _refuse("a key may only create keys for its own team", "team_id")
    if body.key_type == "management":
        raise _refuse("a management key can only be made by an admin", "key_type")
    fields = {**fields, "user_id": caller.user_id, "team_id": caller.team_id}
    if caller.models is not None:
        outside = sorted(set(body.models or ()) - caller.models)
        if outside:
            raise _refuse(f"model '{outside[0]}' is not among this key's models {sorted(caller.models)}", "models")
        fields["models"] = list(body.models or sorted(caller.models))
    if own.max_budget is not None:
        if fields.get("budget_duration", own.budget_duration) != own.budget_duration:
            raise _refuse(f"budget_duration must be this key's own ({own.budget_duration})", "budget_duration")
        fields["budget_duration"] = own.budget_duration
        _at_most(fields, "max_budget", max(0.0, own.max_budget - (own.spend or 0.0)))
    if user is not None:
        _at_most(fields, "max_budget", user.max_budget)
    for name in LIMITS:
        _at_most(fields, name, getattr(own, name))
    _per_model(fields, "model_rpm_limit", own.model_rpm_limit or {})
    _per_model(fields, "model_tpm_limit", own.model_tpm_limit or {})
    _not_later(fields, caller.expires)
    return fields


def _not_later(fields: dict[str, Any], expires: datetime | None) -> None:
    if expires is None:
        return
    asked = fields.get("expires")
    if asked is None:
        fields["expires"] = expires
    elif asked > expires:
        raise _refuse(f"expires {asked.isoformat()} is after this key's own expiry {expires.isoformat()}", "expires")


async def team_admin_of(session, caller: Principal, team_id: str | None) -> bool:
    return team_id is not None and await is_team_admin(session, team_id=team_id, user_id=caller.user_id)


async def may_touch(session, caller: Principal, key: Key) -> bool:
    """Whether a self-serving caller may read or delete `key`: its user's, or its admin team's."""
    return key.user_id == caller.user_id or await team_admin_of(session, caller, key.team_id)


async def for_team(session, caller: Principal, body: KeyGenerate, fields: dict[str, Any]) -> dict:
    """`fields` of a key a team admin creates for its team (body.team_id), for itself, a member of
    the team or no user."""
    if body.key_type == "management":
        raise _refuse("a management key can only be made by an admin", "key_type")
    if body.user_id not in (None, caller.user_id) and await session.get(TeamMember, (body.team_id, body.user_id)) is None:
        raise _refuse(f"user '{body.user_id}' is not a member of team '{body.team_id}'", "user_id")
    return fields
