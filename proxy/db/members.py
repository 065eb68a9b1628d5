"""Queries for team memberships (LiteLLM's members_with_roles) and organizations' teams:
keyword-only functions taking a session."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from .models import Team, TeamMember, User


async def members_of(session: AsyncSession, *, team_ids: Sequence[str]) -> dict[str, list[tuple[TeamMember, User]]]:
    """Each team's memberships with their users, oldest first."""
    found: dict[str, list[tuple[TeamMember, User]]] = defaultdict(list)
    if team_ids:
        rows = await session.execute(select(TeamMember, User).join(User, User.user_id == TeamMember.user_id)
                                     .where(TeamMember.team_id.in_(list(team_ids)))
                                     .order_by(TeamMember.created_at, TeamMember.user_id))
        for member, user in rows.tuples():
            found[member.team_id].append((member, user))
    return found


async def teams_of_user(session: AsyncSession, *, user: User) -> list[Team]:
    """The teams a user is a member of, and its own team (users.team_id)."""
    member_of = select(TeamMember.team_id).where(TeamMember.user_id == user.user_id)
    stmt = select(Team).where(or_(Team.team_id.in_(member_of), Team.team_id == user.team_id)).order_by(Team.created_at)
    return list((await session.execute(stmt)).scalars().all())


async def teams_of_org(session: AsyncSession, *, organization_id: str) -> list[Team]:
    stmt = select(Team).where(Team.organization_id == organization_id).order_by(Team.created_at)
    return list((await session.execute(stmt)).scalars().all())


async def user_by(session: AsyncSession, *, user_id: str | None, user_email: str | None) -> User | None:
    """A user by id, else by email (the oldest with that email)."""
    if user_id is not None:
        return await session.get(User, user_id)
    stmt = select(User).where(User.user_email == user_email).order_by(User.created_at).limit(1)
    return (await session.execute(stmt)).scalar_one_or_none()


async def is_team_admin(session: AsyncSession, *, team_id: str, user_id: str | None) -> bool:
    if user_id is None:
        return False
    member = await session.get(TeamMember, (team_id, user_id))
    return member is not None and member.role == "admin"
