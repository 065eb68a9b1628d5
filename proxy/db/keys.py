"""Queries for keys, users and teams, and the change feed's (auth_changes, written by database
triggers: see migrations/versions/0003): keyword-only functions taking a session."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from .models import AuthChange, Key, Organization, Team, TeamMember, User


@dataclass(frozen=True, slots=True)
class Owners:
    """What a key (or a JWT caller) answers to: its user, its team, the user's membership of that
    team and the team's organization (None where there is none)."""

    user: User | None = None
    team: Team | None = None
    member: TeamMember | None = None
    org: Organization | None = None


async def key_with_owners(session: AsyncSession, *, token_hash: str) -> tuple[Key, Owners] | None:
    """The key whose current or previous secret hashes to `token_hash`, with its owners (one query)."""
    stmt = (select(Key, User, Team, TeamMember, Organization)
            .outerjoin(User, User.user_id == Key.user_id)
            .outerjoin(Team, Team.team_id == Key.team_id)
            .outerjoin(TeamMember, and_(TeamMember.team_id == Key.team_id, TeamMember.user_id == Key.user_id))
            .outerjoin(Organization, Organization.organization_id == Team.organization_id)
            .where(or_(Key.token_hash == token_hash, Key.previous_hash == token_hash)))
    row = (await session.execute(stmt)).first()
    return None if row is None else (row[0], Owners(row[1], row[2], row[3], row[4]))


async def user_and_team(session: AsyncSession, *, user_id: str | None, team_id: str | None) -> Owners:
    """A user and a team by id (the user's own team when `team_id` is None), with the membership
    and organization; None where missing."""
    user = await session.get(User, user_id) if user_id is not None else None
    team_id = team_id or (user.team_id if user is not None else None)
    team = await session.get(Team, team_id) if team_id is not None else None
    member = await session.get(TeamMember, (team_id, user_id)) if team is not None and user is not None else None
    org = await session.get(Organization, team.organization_id) if team is not None and team.organization_id else None
    return Owners(user, team, member, org)


async def key_hashes(session: AsyncSession) -> list[str]:
    """The current and previous secret hashes of every key."""
    rows = await session.execute(select(Key.token_hash, Key.previous_hash))
    return [h for row in rows for h in row if h is not None]


async def last_change(session: AsyncSession) -> int:
    return (await session.execute(select(func.coalesce(func.max(AuthChange.id), 0)))).scalar_one()


async def changes_after(session: AsyncSession, *, after: int,
                        limit: int = 10_000) -> list[tuple[int, str, str, str, float | None]]:
    """(id, kind, op, ident, value) of the changes with an id above `after`, oldest first."""
    rows = await session.execute(select(AuthChange.id, AuthChange.kind, AuthChange.op, AuthChange.ident,
                                        AuthChange.value)
                                 .where(AuthChange.id > after).order_by(AuthChange.id).limit(limit))
    return [tuple(r) for r in rows]  # type: ignore[misc]


async def prune_changes(session: AsyncSession, *, before: datetime) -> None:
    await session.execute(delete(AuthChange).where(AuthChange.changed_at < before))


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

