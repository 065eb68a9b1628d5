"""Queries for keys, users and teams (keyword-only functions taking a session), the loaders that
turn a key hash (or a JWT caller) into the Principal the hot path caches, and the change feed's
queries (auth_changes, written by database triggers: see migrations/versions/0003)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from ..auth.principal import Principal, Scope
from ..durations import utcnow
from .models import AuthChange, Key, Team, User

ADMIN_ROLES = frozenset({"proxy_admin"})


def _allowed(*lists: list[str] | None) -> frozenset[str] | None:
    """Intersection of the non-empty model lists (an empty list means every model)."""
    allowed: frozenset[str] | None = None
    for models in lists:
        if models:
            allowed = frozenset(models) if allowed is None else allowed & frozenset(models)
    return allowed


def _scope(name: str, row: Key | User | Team) -> Scope:
    return Scope(name=name, rpm=row.rpm_limit, tpm=row.tpm_limit, parallel=row.max_parallel_requests,
                 max_budget=row.max_budget, budget_duration=row.budget_duration,
                 budget_reset_at=row.budget_reset_at, spend=row.spend or 0.0)


class Refusal(Exception):
    """A key that exists but may not be used; the reason is safe to show its holder."""



async def load_principal(session: AsyncSession, *, token_hash: str) -> Principal | Refusal | None:
    """The key (current or still-in-grace previous secret) with its user and team, or None."""
    now = utcnow()
    stmt = (select(Key, User, Team)
            .outerjoin(User, User.user_id == Key.user_id)
            .outerjoin(Team, Team.team_id == Key.team_id)
            .where(or_(Key.token_hash == token_hash, Key.previous_hash == token_hash)))
    row = (await session.execute(stmt)).first()
    if row is None:
        return None
    key, user, team = row
    if key.token_hash != token_hash and not (key.previous_valid_until and _aware(key.previous_valid_until) > now):
        return None
    if key.blocked:
        return Refusal("this key is blocked")
    if team is not None and team.blocked:
        return Refusal("this key's team is blocked")
    if user is not None and user.blocked:
        return Refusal("this key's user is blocked")
    scopes = [_scope(f"key:{key.token_hash}", key)]
    if user is not None:
        scopes.append(_scope(f"user:{user.user_id}", user))
    if team is not None:
        scopes.append(_scope(f"team:{team.team_id}", team))
    expires = _aware(key.expires) if key.expires else None
    if key.token_hash != token_hash:  # the previous secret of a rotated key ends with its grace period
        grace = _aware(key.previous_valid_until)  # type: ignore[arg-type]
        expires = grace if expires is None else min(expires, grace)
    return Principal(
        is_admin=user is not None and user.user_role in ADMIN_ROLES,
        key_id=key.id, key_hash=key.token_hash, key_alias=key.key_alias, user_id=key.user_id, team_id=key.team_id,
        key_type=key.key_type, models=_allowed(key.models, user.models if user else None, team.models if team else None),
        aliases=dict(key.aliases or {}), expires=expires, scopes=tuple(scopes),
        model_rpm={k: int(v) for k, v in (key.model_rpm_limit or {}).items()},
        model_tpm={k: int(v) for k, v in (key.model_tpm_limit or {}).items()},
    )


async def load_jwt_principal(session: AsyncSession, *, claims: Principal) -> Principal | Refusal:
    """A JWT caller held to its user's and team's records as a key of that user is: blocked, models
    (intersected with the token's own), limits and budgets. The team is the token's, else the
    user's. Without either record the claims stand alone."""
    user = await session.get(User, claims.user_id) if claims.user_id is not None else None
    team_id = claims.team_id or (user.team_id if user is not None else None)
    team = await session.get(Team, team_id) if team_id is not None else None
    if user is None and team is None:
        return claims
    if team is not None and team.blocked:
        return Refusal("this caller's team is blocked")
    if user is not None and user.blocked:
        return Refusal("this caller's user is blocked")
    scopes = [_scope(f"user:{user.user_id}", user)] if user is not None else []
    if team is not None:
        scopes.append(_scope(f"team:{team.team_id}", team))
    return Principal(
        is_master=claims.is_master, is_admin=user is not None and user.user_role in ADMIN_ROLES,
        key_alias=claims.key_alias, user_id=claims.user_id, team_id=team_id, key_type=claims.key_type,
        models=_narrowed(claims.models, _allowed(user.models if user else None, team.models if team else None)),
        scopes=tuple(scopes))


def _narrowed(claimed: frozenset[str] | None, allowed: frozenset[str] | None) -> frozenset[str] | None:
    if claimed is None or allowed is None:
        return allowed if claimed is None else claimed
    return claimed & allowed


async def key_hashes(session: AsyncSession) -> list[str]:
    """The current and previous secret hashes of every key."""
    rows = await session.execute(select(Key.token_hash, Key.previous_hash))
    return [h for row in rows for h in row if h is not None]


async def last_change(session: AsyncSession) -> int:
    return (await session.execute(select(func.coalesce(func.max(AuthChange.id), 0)))).scalar_one()


async def changes_after(session: AsyncSession, *, after: int, limit: int = 10_000) -> list[tuple[int, str, str, str]]:
    """(id, kind, op, ident) of the changes with an id above `after`, oldest first."""
    rows = await session.execute(select(AuthChange.id, AuthChange.kind, AuthChange.op, AuthChange.ident)
                                 .where(AuthChange.id > after).order_by(AuthChange.id).limit(limit))
    return [tuple(r) for r in rows]  # type: ignore[misc]


async def prune_changes(session: AsyncSession, *, before: datetime) -> None:
    await session.execute(delete(AuthChange).where(AuthChange.changed_at < before))


def _aware(t: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


async def get_key(session: AsyncSession, *, token_hash: str | None = None, alias: str | None = None) -> Key | None:
    stmt = select(Key).where(Key.token_hash == token_hash) if token_hash else select(Key).where(Key.key_alias == alias)
    return (await session.execute(stmt)).scalar_one_or_none()


async def list_rows(session: AsyncSession, model: type, *, filters: dict[str, Any], page: int, size: int
                    ) -> tuple[list, int]:
    conditions = [getattr(model, name) == value for name, value in filters.items() if value is not None]
    total = (await session.execute(select(func.count()).select_from(model).where(*conditions))).scalar_one()
    order = model.created_at.desc()
    rows = (await session.execute(select(model).where(*conditions).order_by(order)
                                  .offset((page - 1) * size).limit(size))).scalars().all()
    return list(rows), total

