"""Team membership, LiteLLM's way: `members_with_roles` (role admin | user), /team/member_add,
/team/member_update, /team/member_delete, and per-member budgets (`max_budget_in_team`, enforced
at admission as the scope `member:<team_id>:<user_id>`, see proxy/auth/records.py).

Who may change a team's members: the master key, proxy_admin keys, and keys of the team's admins
(members with role admin), as LiteLLM documents ("Only proxy_admin or admin of team"). A team admin
changes memberships only: never a user's role, a team's limits or another team."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from fastapi import APIRouter
from sqlalchemy import delete

from ..admin import ERRORS, NOT_FOUND, AdminRoute, AnyCaller, commit, serialize, sessions
from ..db.members import is_team_admin, members_of, user_by
from ..db.models import Key, Team, TeamMember, User
from ..domain import Principal
from ..errors import BadRequest, Forbidden, NotFound
from ..protocol.admin import Member, MemberRef, TeamMemberAdd, TeamMemberDelete, TeamMemberUpdate
from ..protocol.answers import TeamInfo, TeamMemberAdded, TeamMemberUpdated
from ..services import ServicesDep
from .keys import ensure_user

router = APIRouter(prefix="/team", tags=["teams"], route_class=AdminRoute, responses=ERRORS)


def member_info(member: TeamMember, user: User) -> dict:
    return {"role": member.role, "user_id": member.user_id, "user_email": user.user_email}


def membership(member: TeamMember) -> dict:
    return {"team_id": member.team_id, "user_id": member.user_id, "role": member.role,
            "max_budget_in_team": member.max_budget_in_team, "spend": member.spend or 0.0}


async def team_rows(session, teams: Sequence[Team]) -> list[dict]:
    """Teams as answers show them: their columns and their members_with_roles."""
    members = await members_of(session, team_ids=[t.team_id for t in teams])
    return [{**serialize(t), "members_with_roles": [member_info(m, u) for m, u in members.get(t.team_id, [])]}
            for t in teams]


async def add_members(session, team_id: str, members: Sequence[Member], max_budget: float | None,
                      param: str = "member") -> list[tuple[TeamMember, User]]:
    """Memberships of `team_id` for these members; users that do not exist are made (by id, or by
    email with a new id). A user already in the team is a 400, and nothing is added."""
    added = []
    for m in members:
        user = await user_by(session, user_id=m.user_id, user_email=m.user_email)
        if user is None:
            user = await ensure_user(session, m.user_id or str(uuid.uuid4()), m.user_email)
        assert user is not None
        if await session.get(TeamMember, (team_id, user.user_id)) is not None:
            raise BadRequest(f"user '{user.user_id}' is already a member of team '{team_id}'", param=param,
                             code="member_exists")
        member = TeamMember(team_id=team_id, user_id=user.user_id, role=m.role, max_budget_in_team=max_budget,
                            spend=0.0)
        session.add(member)
        await session.flush()
        added.append((member, user))
    return added


async def may_manage(session, caller: Principal, team_id: str) -> bool:
    return caller.may_administer or (caller.may_self_serve
                                     and await is_team_admin(session, team_id=team_id, user_id=caller.user_id))


async def _team(session, caller: Principal, team_id: str) -> Team:
    """The team, if the caller may manage its members (a non-admin learns nothing of other teams)."""
    if not await may_manage(session, caller, team_id):
        raise Forbidden("only the master key, a proxy_admin or an admin of this team may change its members",
                        code="team_admin_only")
    team = await session.get(Team, team_id)
    if team is None:
        raise NotFound(f"team '{team_id}' not found", code="team_not_found")
    return team


async def _member(session, ref: MemberRef) -> tuple[TeamMember, User]:
    user = await user_by(session, user_id=ref.user_id, user_email=ref.user_email)
    member = await session.get(TeamMember, (ref.team_id, user.user_id)) if user is not None else None
    if member is None or user is None:
        who = ref.user_id or ref.user_email
        raise NotFound(f"'{who}' is not a member of team '{ref.team_id}'", code="member_not_found")
    return member, user


@router.post("/member_add", summary="Add members to a team (users that do not exist are made)",
             response_model=TeamMemberAdded, responses=NOT_FOUND)
async def member_add(body: TeamMemberAdd, services: ServicesDep, caller: AnyCaller) -> dict:
    async with sessions(services) as session:
        team = await _team(session, caller, body.team_id)
        added = await add_members(session, team.team_id, body.member, body.max_budget_in_team)
        await commit(session, "team member")
        [row] = await team_rows(session, [team])
    await services.invalidator.publish("team", team.team_id)
    return {**row, "updated_users": [serialize(u) for _, u in added],
            "updated_team_memberships": [membership(m) for m, _ in added]}


@router.post("/member_update", summary="Change a member's role or max_budget_in_team",
             response_model=TeamMemberUpdated, responses=NOT_FOUND)
async def member_update(body: TeamMemberUpdate, services: ServicesDep, caller: AnyCaller) -> dict:
    async with sessions(services) as session:
        await _team(session, caller, body.team_id)
        member, user = await _member(session, body)
        if body.role is not None:
            member.role = body.role
        if "max_budget_in_team" in body.model_fields_set:
            member.max_budget_in_team = body.max_budget_in_team
        await commit(session, "team member")
    await services.invalidator.publish("team", body.team_id)
    return {"team_id": member.team_id, "user_id": member.user_id, "user_email": user.user_email,
            "role": member.role, "max_budget_in_team": member.max_budget_in_team}


@router.post("/member_delete", summary="Remove a member from a team, with the member's keys of that team",
             response_model=TeamInfo, responses=NOT_FOUND)
async def member_delete(body: TeamMemberDelete, services: ServicesDep, caller: AnyCaller) -> dict:
    async with sessions(services) as session:
        team = await _team(session, caller, body.team_id)
        member, user = await _member(session, body)
        keys = [k for k, in (await session.execute(
            delete(Key).where(Key.team_id == team.team_id, Key.user_id == user.user_id).returning(Key.token_hash)))]
        await session.delete(member)
        if user.team_id == team.team_id:
            user.team_id = None
        await commit(session, "team member")
        [row] = await team_rows(session, [team])
    for token_hash in keys:
        await services.invalidator.publish("key", token_hash)
    await services.invalidator.publish("team", team.team_id)
    return row
