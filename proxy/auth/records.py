"""Database rows as the hot path caches them: the Principal a key (or a JWT caller) authenticates
as, a Refusal (blocked key, user, team or organization), or None (no such key, or a previous
secret past its grace).

A principal's scopes are its key's, user's, team's, its membership's of that team (LiteLLM's
`max_budget_in_team`, scope `member:<team_id>:<user_id>`) and the team's organization's; its
models are those every restricting list allows (key, user, team, organization: models/access.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timezone

from sqlalchemy.ext.asyncio import AsyncSession

from ..db.keys import Owners, key_with_owners, user_and_team
from ..db.models import Key, Organization, Team, User
from ..domain import Principal, Refusal, Scope
from ..durations import utcnow
from ..models.access import allowed_models, patterns

ADMIN_ROLES = frozenset({"proxy_admin"})


NO_GROUPS: Mapping[str, frozenset[str]] = {}


async def load_principal(session: AsyncSession, *, token_hash: str,
                         groups: Mapping[str, frozenset[str]] = NO_GROUPS) -> Principal | Refusal | None:
    """The key (current or still-in-grace previous secret) with its user and team, or None.
    `groups`: the model map's access groups (name -> model names), expanded in `models` lists."""
    row = await key_with_owners(session, token_hash=token_hash)
    if row is None:
        return None
    key, owners = row
    if key.token_hash != token_hash and not (key.previous_valid_until and _aware(key.previous_valid_until) > utcnow()):
        return None
    if key.blocked:
        return Refusal("this key is blocked")
    refused = _blocked(owners, "key")
    if refused is not None:
        return refused
    expires = _aware(key.expires) if key.expires else None
    if key.token_hash != token_hash:  # the previous secret of a rotated key ends with its grace period
        grace = _aware(key.previous_valid_until)  # type: ignore[arg-type]
        expires = grace if expires is None else min(expires, grace)
    user = owners.user
    models = allowed_models(_models(owners), groups, key=key.models, has_team=owners.team is not None)
    return Principal(
        is_admin=user is not None and user.user_role in ADMIN_ROLES, user_role=user.user_role if user else None,
        key_id=key.id, key_hash=key.token_hash, key_alias=key.key_alias, key_name=key.key_prefix,
        user_id=key.user_id, team_id=key.team_id,
        organization_id=owners.org.organization_id if owners.org else None, key_type=key.key_type,
        models=models, model_patterns=patterns(models), aliases=dict(key.aliases or {}), expires=expires,
        scopes=(row_scope(f"key:{key.token_hash}", key), *_scopes(owners)),
        model_rpm={k: int(v) for k, v in (key.model_rpm_limit or {}).items()},
        model_tpm={k: int(v) for k, v in (key.model_tpm_limit or {}).items()},
    )


async def load_jwt_principal(session: AsyncSession, *, claims: Principal,
                             groups: Mapping[str, frozenset[str]] = NO_GROUPS) -> Principal | Refusal:
    """A JWT caller held to its user's and team's records as a key of that user is: blocked, models
    (intersected with the token's own), limits and budgets. The team is the token's, else the
    user's. Without either record the claims stand alone."""
    owners = await user_and_team(session, user_id=claims.user_id, team_id=claims.team_id)
    user, team = owners.user, owners.team
    if user is None and team is None:
        if not claims.models:
            return claims
        models = allowed_models((claims.models,), groups)
        return replace(claims, models=models, model_patterns=patterns(models))
    refused = _blocked(owners, "caller")
    if refused is not None:
        return refused
    models = allowed_models((claims.models, *_models(owners)), groups)
    return Principal(
        is_master=claims.is_master, is_admin=user is not None and user.user_role in ADMIN_ROLES,
        user_role=user.user_role if user else None, key_alias=claims.key_alias, user_id=claims.user_id,
        team_id=claims.team_id or (user.team_id if user is not None else None),
        organization_id=owners.org.organization_id if owners.org else None, key_type=claims.key_type,
        models=models, model_patterns=patterns(models), scopes=_scopes(owners))


def _blocked(owners: Owners, who: str) -> Refusal | None:
    for what, row in (("organization", owners.org), ("team", owners.team), ("user", owners.user)):
        if row is not None and row.blocked:
            return Refusal(f"this {who}'s {what} is blocked")
    return None


def _models(owners: Owners) -> tuple[list[str] | None, ...]:
    return tuple(row.models if row is not None else None for row in (owners.user, owners.team, owners.org))


def _scopes(owners: Owners) -> tuple[Scope, ...]:
    """The user's, team's, membership's and organization's scopes (those that exist)."""
    scopes = []
    if owners.user is not None:
        scopes.append(row_scope(f"user:{owners.user.user_id}", owners.user))
    if owners.team is not None:
        scopes.append(row_scope(f"team:{owners.team.team_id}", owners.team))
    member = owners.member
    if member is not None and member.max_budget_in_team is not None:
        scopes.append(Scope(name=f"member:{member.team_id}:{member.user_id}", max_budget=member.max_budget_in_team,
                            spend=member.spend or 0.0))
    if owners.org is not None:
        scopes.append(row_scope(f"org:{owners.org.organization_id}", owners.org))
    return tuple(scopes)


def row_scope(name: str, row: Key | User | Team | Organization) -> Scope:
    """The limits, budget and spend of a key, user, team or organization row, as the scope `name`."""
    return Scope(name=name, rpm=row.rpm_limit, tpm=row.tpm_limit, parallel=row.max_parallel_requests,
                 max_budget=row.max_budget, budget_duration=row.budget_duration,
                 budget_reset_at=row.budget_reset_at, spend=row.spend or 0.0)


def _aware(t: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)
