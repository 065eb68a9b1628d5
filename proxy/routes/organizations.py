"""/organization/*: LiteLLM's level above teams. An organization has models, limits and a budget
like a team; a team joins one through its `organization_id`.

- A team's models must be among its organization's (when the organization lists models), and its
  max_budget may not exceed the organization's: checked when a team is made or changed (400).
- At admission the organization is one more scope of every key of its teams (`org:<id>`: rpm,
  tpm, parallel, budget) and its models are intersected with the key's, user's and team's
  (proxy/auth/records.py), so narrowing an organization's models narrows its teams' at once.
- An organization with teams cannot be deleted (409): move or delete its teams first."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import delete, select

from ..admin import CONFLICT, ERRORS, NOT_FOUND, Admin, AdminRoute, apply, commit, serialize, sessions
from ..db.members import teams_of_org
from ..db.models import Organization, Team
from ..errors import BadRequest, Conflict, NotFound
from ..protocol.admin import OrganizationDelete, OrganizationNew, OrganizationUpdate
from ..protocol.answers import OrganizationInfo, OrganizationWithTeams
from ..protocol.fields import Id
from ..services import ServicesDep
from .members import team_rows

router = APIRouter(prefix="/organization", tags=["organizations"], route_class=AdminRoute, responses=ERRORS)


async def check_team_in_org(session, team: Team) -> None:
    """A team's models and budget fit within its organization's (400 naming the field if not)."""
    if team.organization_id is None:
        return
    with session.no_autoflush:  # the team may be pending, naming an organization that does not exist
        org = await session.get(Organization, team.organization_id)
    if org is None:
        raise BadRequest(f"organization_id '{team.organization_id}' does not exist", param="organization_id")
    outside = sorted(set(team.models or []) - set(org.models)) if org.models else []
    if outside:
        raise BadRequest(f"model '{outside[0]}' is not among organization '{org.organization_id}''s models "
                         f"{sorted(org.models)}", param="models")
    if org.max_budget is not None and team.max_budget is not None and team.max_budget > org.max_budget:
        raise BadRequest(f"max_budget {team.max_budget} exceeds organization '{org.organization_id}''s "
                         f"max_budget {org.max_budget}", param="max_budget")


async def _load(session, organization_id: str) -> Organization:
    org = await session.get(Organization, organization_id)
    if org is None:
        raise NotFound(f"organization '{organization_id}' not found", code="organization_not_found")
    return org


@router.post("/new", summary="Create an organization", response_model=OrganizationInfo, responses=CONFLICT)
async def new(body: OrganizationNew, services: ServicesDep, _: Admin) -> dict:
    ident = body.organization_id or str(uuid.uuid4())
    async with sessions(services) as session:
        if await session.get(Organization, ident) is not None:
            raise Conflict(f"organization '{ident}' already exists", param="organization_id")
        org = Organization(organization_id=ident, models=[], metadata_={}, spend=0.0, blocked=False)
        apply(org, body.model_dump(exclude_unset=True, exclude={"organization_id"}))
        session.add(org)
        await commit(session, "organization")
        return serialize(org)


async def _update(body: OrganizationUpdate, services: ServicesDep) -> dict:
    async with sessions(services) as session:
        org = await _load(session, body.organization_id)
        apply(org, body.model_dump(exclude_unset=True, exclude={"organization_id"}))
        await commit(session, "organization")
    await services.invalidator.publish("org", org.organization_id)
    return serialize(org)


@router.patch("/update", summary="Change an organization's fields", response_model=OrganizationInfo,
              responses=NOT_FOUND)
async def update(body: OrganizationUpdate, services: ServicesDep, _: Admin) -> dict:
    return await _update(body, services)


@router.post("/update", summary="Change an organization's fields (POST, as Keystile's other routes)",
             response_model=OrganizationInfo, responses=NOT_FOUND)
async def update_post(body: OrganizationUpdate, services: ServicesDep, _: Admin) -> dict:
    return await _update(body, services)


@router.get("/info", summary="An organization with its teams", response_model=OrganizationWithTeams,
            responses=NOT_FOUND)
async def info(services: ServicesDep, _: Admin, organization_id: Annotated[Id, Query()]) -> dict:
    async with sessions(services) as session:
        org = await _load(session, organization_id)
        teams = await team_rows(session, await teams_of_org(session, organization_id=organization_id))
    return {**serialize(org), "teams": teams}


@router.get("/list", summary="Every organization (LiteLLM answers a list)", response_model=list[OrganizationInfo])
async def list_all(services: ServicesDep, _: Admin) -> list[dict]:
    async with sessions(services) as session:
        rows = (await session.execute(select(Organization).order_by(Organization.created_at))).scalars().all()
    return [serialize(r) for r in rows]


async def _delete(body: OrganizationDelete, services: ServicesDep) -> list[dict]:
    async with sessions(services) as session:
        orgs = [await _load(session, ident) for ident in body.organization_ids]
        for org in orgs:
            if await teams_of_org(session, organization_id=org.organization_id):
                raise Conflict(f"organization '{org.organization_id}' has teams; move or delete them first",
                               param="organization_ids")
        out = [serialize(o) for o in orgs]
        await session.execute(delete(Organization).where(Organization.organization_id.in_(body.organization_ids)))
        await session.commit()
    return out


@router.delete("/delete", summary="Delete organizations that have no teams (LiteLLM's method)",
               response_model=list[OrganizationInfo], responses=NOT_FOUND | CONFLICT)
async def remove(body: OrganizationDelete, services: ServicesDep, _: Admin) -> list[dict]:
    return await _delete(body, services)


@router.post("/delete", summary="Delete organizations that have no teams (POST, as Keystile's other routes)",
             response_model=list[OrganizationInfo], responses=NOT_FOUND | CONFLICT)
async def remove_post(body: OrganizationDelete, services: ServicesDep, _: Admin) -> list[dict]:
    return await _delete(body, services)
