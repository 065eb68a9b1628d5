"""Database rows as the hot path caches them: the Principal a key (or a JWT caller) authenticates
as, a Refusal (blocked key, user or team), or None (no such key, or a previous secret past its
grace)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timezone

from sqlalchemy.ext.asyncio import AsyncSession

from ..db.keys import key_with_owners, user_and_team
from ..db.models import Key, Team, User
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
    key, user, team = row
    if key.token_hash != token_hash and not (key.previous_valid_until and _aware(key.previous_valid_until) > utcnow()):
        return None
    if key.blocked:
        return Refusal("this key is blocked")
    if team is not None and team.blocked:
        return Refusal("this key's team is blocked")
    if user is not None and user.blocked:
        return Refusal("this key's user is blocked")
    scopes = [row_scope(f"key:{key.token_hash}", key)]
    if user is not None:
        scopes.append(row_scope(f"user:{user.user_id}", user))
    if team is not None:
        scopes.append(row_scope(f"team:{team.team_id}", team))
    expires = _aware(key.expires) if key.expires else None
    if key.token_hash != token_hash:  # the previous secret of a rotated key ends with its grace period
        grace = _aware(key.previous_valid_until)  # type: ignore[arg-type]
        expires = grace if expires is None else min(expires, grace)
    models = allowed_models((user.models if user else None, team.models if team else None), groups,
                            key=key.models, has_team=team is not None)
    return Principal(
        is_admin=user is not None and user.user_role in ADMIN_ROLES,
        key_id=key.id, key_hash=key.token_hash, key_alias=key.key_alias, key_name=key.key_prefix,
        user_id=key.user_id, team_id=key.team_id,
        key_type=key.key_type, models=models, model_patterns=patterns(models),
        aliases=dict(key.aliases or {}), expires=expires, scopes=tuple(scopes),
        model_rpm={k: int(v) for k, v in (key.model_rpm_limit or {}).items()},
        model_tpm={k: int(v) for k, v in (key.model_tpm_limit or {}).items()},
    )


async def load_jwt_principal(session: AsyncSession, *, claims: Principal,
                             groups: Mapping[str, frozenset[str]] = NO_GROUPS) -> Principal | Refusal:
    """A JWT caller held to its user's and team's records as a key of that user is: blocked, models
    (intersected with the token's own), limits and budgets. The team is the token's, else the
    user's. Without either record the claims stand alone."""
    user, team = await user_and_team(session, user_id=claims.user_id, team_id=claims.team_id)
    if user is None and team is None:
        if not claims.models:
            return claims
        models = allowed_models((claims.models,), groups)
        return replace(claims, models=models, model_patterns=patterns(models))
    if team is not None and team.blocked:
        return Refusal("this caller's team is blocked")
    if user is not None and user.blocked:
        return Refusal("this caller's user is blocked")
    scopes = [row_scope(f"user:{user.user_id}", user)] if user is not None else []
    if team is not None:
        scopes.append(row_scope(f"team:{team.team_id}", team))
    models = allowed_models((claims.models, user.models if user else None, team.models if team else None), groups)
    return Principal(
        is_master=claims.is_master, is_admin=user is not None and user.user_role in ADMIN_ROLES,
        key_alias=claims.key_alias, user_id=claims.user_id,
        team_id=claims.team_id or (user.team_id if user is not None else None), key_type=claims.key_type,
        models=models, model_patterns=patterns(models),
        scopes=tuple(scopes))


def row_scope(name: str, row: Key | User | Team) -> Scope:
    """The limits, budget and spend of a key, user or team row, as the scope `name`."""
    return Scope(name=name, rpm=row.rpm_limit, tpm=row.tpm_limit, parallel=row.max_parallel_requests,
                 max_budget=row.max_budget, budget_duration=row.budget_duration,
                 budget_reset_at=row.budget_reset_at, spend=row.spend or 0.0)


def _aware(t: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)
