"""/key/*: LiteLLM's key management routes. The raw key appears once, in the answer that creates it.

/key/generate, /key/list, /key/info and /key/delete also serve self-service keys (an
internal_user's key, see self_serve.py): for its own user's keys only. Another user's key is a
403 (an unknown one a 404, for every caller, as in LiteLLM)."""

from __future__ import annotations

import uuid

from typing import Annotated

from fastapi import APIRouter, Body, Path
from pydantic import BaseModel
from sqlalchemy import delete, or_, select

from ..admin import (CONFLICT, ERRORS, NOT_FOUND, Admin, AdminRoute, AnyCaller, Page, Size, apply, commit,
                     key_info, pages, require, sessions)
from ..auth import spend
from ..auth.secrets import display_name, hash_key, new_key, to_hash
from ..db.keys import get_key, list_rows
from ..db.models import Key, Team, User
from ..domain import Principal
from ..durations import after
from ..errors import BadRequest, Conflict, Forbidden, NotFound
from ..protocol.admin import KeyBlock, KeyDelete, KeyFields, KeyGenerate, KeyRegenerate, KeyUpdate
from ..protocol.answers import DeletedKeys, KeyInfo, KeyInfoAnswer, KeyList, NewKey
from ..protocol.fields import Id, KeyRef, Name
from ..services import Services, ServicesDep
from .self_serve import bounded, for_team, may_touch, team_admin_of

router = APIRouter(prefix="/key", tags=["keys"], route_class=AdminRoute, responses=ERRORS)


KEY_FIELDS = frozenset(KeyFields.model_fields) | {"spend"}


def key_fields(body: BaseModel, names: frozenset[str] = KEY_FIELDS) -> dict:
    """The key's fields among `names` in a body (a key's, or /user/new's for the key it makes):
    `duration` becomes `expires`."""
    fields = body.model_dump(exclude_unset=True, include=set(names), exclude={"duration", "expires"})
    if body.duration is not None:
        fields["expires"] = after(body.duration)
    elif "expires" in body.model_fields_set:
        fields["expires"] = body.expires
    return fields


async def _load(session, key_or_hash: str) -> Key:
    key = await get_key(session, token_hash=to_hash(key_or_hash))
    if key is None:
        raise NotFound("key not found", code="key_not_found")
    return key


async def ensure_user(session, user_id: str | None, user_email: str | None = None) -> User | None:
    """A key (or a team member) may name a user that has no row yet (LiteLLM accepts it): the row
    is made, with no limits of its own, in the caller's transaction."""
    if user_id is None:
        return None
    user = await session.get(User, user_id)
    if user is None:
        user = User(user_id=user_id, user_email=user_email, user_role="internal_user", models=[], metadata_={},
                    spend=0.0, blocked=False)
        session.add(user)
        await session.flush()
    return user


async def check_alias(session, alias: str | None) -> None:
    if alias and await get_key(session, alias=alias) is not None:
        raise Conflict(f"key_alias '{alias}' is already used", param="key_alias")


def make_key(fields: dict) -> tuple[str, Key]:
    """A new key row with these fields (not yet added to a session) and its raw secret."""
    secret = new_key()
    key = Key(id=str(uuid.uuid4()), token_hash=hash_key(secret), key_prefix=display_name(secret), models=[],
              aliases={}, model_rpm_limit={}, model_tpm_limit={}, metadata_={}, spend=0.0, blocked=False,
              key_type="default")
    apply(key, fields)
    return secret, key


def new_key_answer(secret: str, key: Key) -> dict:
    return {"key": secret, "token_id": key.token_hash, **key_info(key)}


def self_serving(caller: Principal) -> bool:
    """Whether the caller is limited to its own user's keys (403 if it may not manage keys at all)."""
    if caller.may_administer:
        return False
    if not caller.may_self_serve:
        raise Forbidden("this route needs the master key, an admin key or an internal_user's key", code="admin_only")
    return True


@router.post("/generate", summary="Create a virtual key (an internal_user's key: for its own user, within its "
             "own limits)", response_model=NewKey, responses=CONFLICT)
async def generate(body: KeyGenerate, services: ServicesDep, caller: AnyCaller) -> dict:
    fields = key_fields(body)
    async with sessions(services) as session:
        if self_serving(caller):
            if await team_admin_of(session, caller, body.team_id):
                fields = await for_team(session, caller, body, fields)
            else:
                own = await _load(session, caller.key_hash)  # type: ignore[arg-type] - a self-serving caller is a key
                fields = bounded(caller, body, fields, own, await session.get(User, caller.user_id))
        await require(session, Team, fields.get("team_id"), "team_id")
        await check_alias(session, body.key_alias)
        await ensure_user(session, fields.get("user_id"))
        secret, key = make_key(fields)
        session.add(key)
        await commit(session, "key")
    await services.invalidator.publish("key", key.token_hash)
    return new_key_answer(secret, key)


@router.post("/update", summary="Change a key's fields", response_model=KeyInfo, responses=NOT_FOUND | CONFLICT)
async def update(body: KeyUpdate, services: ServicesDep, _: Admin) -> dict:
    async with sessions(services) as session:
        key = await _load(session, body.key)
        if body.key_alias != key.key_alias:
            await check_alias(session, body.key_alias)
        await require(session, Team, body.team_id, "team_id")
        await ensure_user(session, body.user_id)
        fields = key_fields(body)
        apply(key, fields)
        spend_set = (spend.note(session, "key", key.token_hash, fields["spend"]) if fields.get("spend") is not None
                     else None)
        await commit(session, "key")
        await services.invalidator.publish("key", key.token_hash)
        if spend_set is not None:
            await services.spend.applied(spend_set, key)
        return key_info(key)


@router.post("/delete", summary="Delete keys by key/hash or alias (an internal_user's key: its own user's)",
             response_model=DeletedKeys, responses=NOT_FOUND)
async def delete_keys(body: KeyDelete, services: ServicesDep, caller: AnyCaller) -> dict:
    own_only = self_serving(caller)
    if not body.keys and not body.key_aliases:
        raise BadRequest("send 'keys' or 'key_aliases'", param="keys")
    hashes = [to_hash(k) for k in body.keys or []]
    async with sessions(services) as session:
        found = (await session.execute(select(Key).where(
            or_(Key.token_hash.in_(hashes), Key.key_alias.in_(body.key_aliases or []))))).scalars().all()
        aliases = set(body.key_aliases or [])
        missing = (set(hashes) - {k.token_hash for k in found}) | (aliases - {k.key_alias for k in found})
        if missing:
            raise NotFound(f"{len(missing)} of the keys were not found; nothing was deleted", code="key_not_found")
        for key in found if own_only else ():
            if not await may_touch(session, caller, key):
                raise Forbidden("a key may only delete its own user's keys (or its admin team's); nothing was deleted",
                                code="admin_only")
        await session.execute(delete(Key).where(Key.id.in_([k.id for k in found])))
        await session.commit()
    for key in found:
        await services.invalidator.publish("key", key.token_hash)
    return {"deleted_keys": [k.token_hash for k in found]}


@router.get("/info", summary="A key's fields and spend (a key may read its own)", response_model=KeyInfoAnswer,
            responses=NOT_FOUND)
async def info(services: ServicesDep, caller: AnyCaller, key: KeyRef | None = None) -> dict:
    target = to_hash(key) if key else caller.key_hash
    if target is None:
        raise BadRequest("pass ?key=", param="key")
    async with sessions(services) as session:
        row = await _load(session, target)  # an unknown key is a 404 for every caller, as in LiteLLM
        if not caller.may_administer and row.token_hash != caller.key_hash and not (
                caller.may_self_serve and await may_touch(session, caller, row)):
            raise Forbidden("a key may only read its own info (an internal_user's key: its user's keys, a team "
                            "admin's: its team's)", code="admin_only")
        return {"key": row.token_hash, "info": key_info(row)}


@router.get("/list", summary="Keys, paginated, filtered by user, team or alias (an internal_user's key: its "
            "own user's)", response_model=KeyList)
async def list_keys(services: ServicesDep, caller: AnyCaller, page: Page = 1, size: Size = 50,
                    user_id: Id | None = None, team_id: Id | None = None, key_alias: Name | None = None,
                    return_full_object: bool = False) -> dict:
    async with sessions(services) as session:
        if self_serving(caller) and not await team_admin_of(session, caller, team_id):
            if user_id not in (None, caller.user_id):
                raise Forbidden("a key may only list its own user's keys (or its admin team's)", code="admin_only",
                                param="user_id")
            user_id = caller.user_id
        rows, total = await list_rows(session, Key, filters={"user_id": user_id, "team_id": team_id,
                                                             "key_alias": key_alias}, page=page, size=size)
    keys = [key_info(k) if return_full_object else k.token_hash for k in rows]
    return {"keys": keys, "total_count": total, "current_page": page, "total_pages": pages(total, size)}


async def _regenerate(services: Services, ref: str, grace_period: str | None) -> dict:
    async with sessions(services) as session:
        key = await _load(session, ref)
        old_hash, secret = key.token_hash, new_key()
        key.token_hash, key.key_prefix = hash_key(secret), display_name(secret)
        key.previous_hash = old_hash if grace_period else None
        key.previous_valid_until = after(grace_period) if grace_period else None
        await commit(session, "key")
    await services.invalidator.publish("key", old_hash)
    await services.invalidator.publish("key", key.token_hash)
    return new_key_answer(secret, key)


@router.post("/regenerate", summary="Rotate a key's secret (optional grace period for the old one)",
             response_model=NewKey, responses=NOT_FOUND)
async def regenerate(body: KeyRegenerate, services: ServicesDep, _: Admin) -> dict:
    if not body.key:
        raise BadRequest("key is required", param="key")
    return await _regenerate(services, body.key, body.grace_period)


@router.post("/{key}/regenerate", summary="Rotate a key's secret (LiteLLM's path form)", response_model=NewKey,
             responses=NOT_FOUND)
async def regenerate_path(key: Annotated[KeyRef, Path()], services: ServicesDep, _: Admin,
                          body: Annotated[KeyRegenerate | None, Body()] = None) -> dict:
    return await _regenerate(services, key, body.grace_period if body else None)


async def _set_blocked(body: KeyBlock, services: Services, blocked: bool) -> dict:
    async with sessions(services) as session:
        key = await _load(session, body.key)
        key.blocked = blocked
        await commit(session, "key")
    await services.invalidator.publish("key", key.token_hash)
    return key_info(key)


@router.post("/block", summary="Block a key (stops working everywhere within a second)", response_model=KeyInfo,
             responses=NOT_FOUND)
async def block(body: KeyBlock, services: ServicesDep, _: Admin) -> dict:
    return await _set_blocked(body, services, True)


@router.post("/unblock", summary="Unblock a key", response_model=KeyInfo, responses=NOT_FOUND)
async def unblock(body: KeyBlock, services: ServicesDep, _: Admin) -> dict:
    return await _set_blocked(body, services, False)
