"""/team/* and /user/*: LiteLLM's team and user routes, built from one description each since
both do the same: new, update, delete (with their keys), info, list. What differs is in each
description's hooks: how rows are shown (a team with its members_with_roles), what /info adds (a
team's memberships, a user's teams), and what a new or changed row must satisfy (a team's members
and its organization's bounds).

No `from __future__ import annotations` here: the handlers' parameter types are the entity's
models, which FastAPI must see as classes, not as names it cannot resolve."""

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel
from sqlalchemy import delete, select

from ..admin import (CONFLICT, ERRORS, NOT_FOUND, Admin, AdminRoute, AnyCaller, Page, Size, apply, commit,
                     key_info, pages, require, serialize, sessions)
from ..auth import spend
from ..db.keys import list_rows
from ..db.members import is_team_admin, members_of, teams_of_user
from ..db.models import Key, Team, User
from ..domain import Principal
from ..errors import BadRequest, Conflict, Forbidden, NotFound
from ..protocol import answers
from ..protocol.admin import KEY_ONLY, TeamDelete, TeamNew, TeamUpdate, UserDelete, UserNew, UserRole, UserUpdate
from ..protocol.fields import NO_NUL, Id
from ..services import ServicesDep
from .keys import check_alias, key_fields, make_key
from .members import add_members, membership, team_rows
from .organizations import check_team_in_org


@dataclass(frozen=True)
class Entity:
    kind: str            # "team" | "user"
    model: type
    id_field: str        # team_id | user_id
    new: type[BaseModel]
    update: type[BaseModel]
    remove: type[BaseModel]
    ids_field: str       # team_ids | user_ids
    created: type[BaseModel]
    row: type[BaseModel]
    info: type[BaseModel]
    listing: type[BaseModel]
    deleted: type[BaseModel]
    filters: Callable[..., dict[str, Any]]  # the /list query filters, as a FastAPI dependency
    rows: Callable[[Any, Sequence[Any]], Awaitable[list[dict]]]  # rows as answers show them
    related: Callable[[Any, Any], Awaitable[dict]]  # what /info adds to the row and its keys
    check: Callable[[Any, Any, BaseModel | None], Awaitable[None]]  # before a new (with its body) or changed row is kept
    reader: Callable[[Any, Principal, str], Awaitable[bool]]  # may a non-admin caller read this one's /info


def no_filters() -> dict[str, Any]:
    return {}


def user_filters(team_id: Id | None = None, user_role: UserRole | None = None) -> dict[str, Any]:
    return {"team_id": team_id, "user_role": user_role}


async def plain_rows(_session, rows: Sequence[Any]) -> list[dict]:
    return [serialize(r) for r in rows]


async def team_related(session, team: Team) -> dict:
    members = await members_of(session, team_ids=[team.team_id])
    return {"team_memberships": [membership(m) for m, _ in members.get(team.team_id, [])]}


async def user_related(session, user: User) -> dict:
    return {"teams": await team_rows(session, await teams_of_user(session, user=user))}


async def team_check(session, team: Team, body: BaseModel | None) -> None:
    await check_team_in_org(session, team)
    members = getattr(body, "members_with_roles", None)
    if members:
        await session.flush()
        await add_members(session, team.team_id, members, None, "members_with_roles")


async def no_check(_session, _row, _body) -> None:
    return None


async def team_reader(session, caller: Principal, team_id: str) -> bool:
    return caller.team_id == team_id or await is_team_admin(session, team_id=team_id, user_id=caller.user_id)


async def user_reader(_session, caller: Principal, user_id: str) -> bool:
    return caller.user_id == user_id


TEAM = Entity("team", Team, "team_id", TeamNew, TeamUpdate, TeamDelete, "team_ids",
              answers.TeamInfo, answers.TeamInfo, answers.TeamInfoAnswer, answers.TeamList, answers.DeletedTeams,
              no_filters, team_rows, team_related, team_check, team_reader)
USER = Entity("user", User, "user_id", UserNew, UserUpdate, UserDelete, "user_ids",
              answers.NewUser, answers.UserInfo, answers.UserInfoAnswer, answers.UserList, answers.DeletedUsers,
              user_filters, plain_rows, user_related, no_check, user_reader)


def build(e: Entity) -> APIRouter:
    """The five routes of one entity, their bodies and answers typed with the entity's models."""
    router = APIRouter(prefix=f"/{e.kind}", tags=[f"{e.kind}s"], route_class=AdminRoute, responses=ERRORS)
    key_column = getattr(Key, e.id_field)

    async def load(session, ident: str):
        row = await session.get(e.model, ident)
        if row is None:
            raise NotFound(f"{e.kind} '{ident}' not found", code=f"{e.kind}_not_found")
        return row

    @router.post("/new", summary=f"Create a {e.kind}", response_model=e.created, responses=CONFLICT,
                 response_model_exclude_unset=True)  # a user's `key` only when one was made
    async def new(body: e.new, services: ServicesDep, _: Admin) -> dict:
        wants_key = getattr(body, "auto_create_key", False)
        given_for_key = body.model_fields_set & KEY_ONLY
        if given_for_key and not wants_key:
            raise BadRequest(f"{sorted(given_for_key)[0]} is a field of the key: it needs auto_create_key",
                             param=sorted(given_for_key)[0])
        fields = body.model_dump(exclude_unset=True, exclude={e.id_field, "auto_create_key", "members_with_roles"}
                                 | KEY_ONLY)
        ident = getattr(body, e.id_field) or str(uuid.uuid4())
        async with sessions(services) as session:
            if await session.get(e.model, ident) is not None:
                raise Conflict(f"{e.kind} '{ident}' already exists", param=e.id_field)
            await require(session, Team, fields.get("team_id"), "team_id")
            row = e.model(**{e.id_field: ident}, models=[], metadata_={}, spend=0.0, blocked=False)
            apply(row, fields)
            session.add(row)
            await e.check(session, row, body)
            key = None
            if wants_key:  # in the same transaction: the user and its key are made together or not at all
                await check_alias(session, getattr(body, "key_alias", None))
                await session.flush()
                secret, key = make_key({**key_fields(body, KEY_ONLY | {"metadata"}), e.id_field: ident,
                                 "team_id": fields.get("team_id")})
                session.add(key)
            await commit(session, e.kind)
            [out] = await e.rows(session, [row])
        if key is not None:
            await services.invalidator.publish("key", key.token_hash)
            out.update(key=secret, token=key.token_hash, expires=key.expires, key_alias=key.key_alias)
        return out

    @router.post("/update", summary=f"Change a {e.kind}'s fields", response_model=e.row,
                 responses=NOT_FOUND | CONFLICT)
    async def update(body: e.update, services: ServicesDep, _: Admin) -> dict:
        fields = body.model_dump(exclude_unset=True, exclude={e.id_field})
        async with sessions(services) as session:
            row_id = getattr(body, e.id_field)
            row = await load(session, row_id)
            await require(session, Team, fields.get("team_id"), "team_id")
            apply(row, fields)
            await e.check(session, row, None)
            spend_set = spend.note(session, e.kind, row_id, fields["spend"]) if fields.get("spend") is not None else None
            await commit(session, e.kind)
            [out] = await e.rows(session, [row])
        await services.invalidator.publish(e.kind, out[e.id_field])
        if spend_set is not None:
            await services.spend.applied(spend_set, row)
        return out

    @router.post("/delete", summary=f"Delete {e.kind}s and their keys", response_model=e.deleted,
                 responses=NOT_FOUND)
    async def remove(body: e.remove, services: ServicesDep, _: Admin) -> dict:
        ids = getattr(body, e.ids_field)
        async with sessions(services) as session:
            for ident in ids:
                await load(session, ident)
            await session.execute(delete(Key).where(key_column.in_(ids)))
            await session.execute(delete(e.model).where(getattr(e.model, e.id_field).in_(ids)))
            await session.commit()
        for ident in ids:
            await services.invalidator.publish(e.kind, ident)
        return {f"deleted_{e.kind}s": ids}

    @router.get("/info", summary=f"A {e.kind} with its keys and spend", response_model=e.info, responses=NOT_FOUND)
    async def info(services: ServicesDep, caller: AnyCaller,
                   ident: Annotated[str, Query(alias=e.id_field, min_length=1, max_length=64, pattern=NO_NUL)]) -> dict:
        async with sessions(services) as session:
            if not caller.may_administer and not await e.reader(session, caller, ident):
                raise Forbidden(f"a key may only read its own {e.kind}", code="admin_only")
            row = await load(session, ident)
            keys = (await session.execute(select(Key).where(key_column == ident))).scalars().all()
            [shown] = await e.rows(session, [row])
            related = await e.related(session, row)
        return {e.id_field: ident, f"{e.kind}_info": shown, "keys": [key_info(k) for k in keys], **related}

    @router.get("/list", summary=f"{e.kind.capitalize()}s, paginated", response_model=e.listing)
    async def list_all(services: ServicesDep, _: Admin, filters: Annotated[dict, Depends(e.filters)],
                       page: Page = 1, size: Size = 50) -> dict:
        async with sessions(services) as session:
            rows, total = await list_rows(session, e.model, filters=filters, page=page, size=size)
            shown = await e.rows(session, rows)
        return {f"{e.kind}s": shown, "total_count": total, "current_page": page,
                "total_pages": pages(total, size)}

    return router


teams = build(TEAM)
users = build(USER)
