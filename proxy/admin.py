"""What the admin routes share: the admin caller dependency, body parsing, row serialization,
applying field updates, and commit-then-invalidate."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import Depends, Request
from pydantic import BaseModel
from sqlalchemy import inspect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from .auth.principal import Principal
from .db.models import Key, Team, User
from .durations import after
from .errors import BadRequest, Conflict, Forbidden
from .requests import read_json, validate
from .services import Services, ServicesDep

ADMIN_BODY_LIMIT = 1024 * 1024


async def any_caller(request: Request, services: ServicesDep) -> Principal:
    return await services.auth.authenticate(request)


async def admin_caller(principal: Annotated[Principal, Depends(any_caller)]) -> Principal:
    if not principal.may_administer:
        raise Forbidden("this route needs the master key or an admin key", code="admin_only")
    return principal


Admin = Annotated[Principal, Depends(admin_caller)]
AnyCaller = Annotated[Principal, Depends(any_caller)]


async def parse(request: Request, model: type[BaseModel]) -> BaseModel:
    return validate(model, await read_json(request, ADMIN_BODY_LIMIT))


def _iso(value: Any) -> Any:
    """Datetimes as ISO 8601 with their offset (SQLite hands back naive UTC values)."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).isoformat()
    return value


def serialize(row: Key | User | Team, *, hide: tuple[str, ...] = ()) -> dict[str, Any]:
    out = {}
    for attr in inspect(row).mapper.column_attrs:
        name = attr.columns[0].name
        if name not in hide:
            out[name] = _iso(getattr(row, attr.key))
    return out


def key_info(key: Key) -> dict[str, Any]:
    info = serialize(key, hide=("token_hash", "previous_hash", "key_prefix"))
    return {"token": key.token_hash, "key_name": key.key_prefix, **info}


def apply(row: Key | User | Team, fields: dict[str, Any]) -> None:
    """Set the given fields on a row; a new budget_duration starts a new window."""
    for name, value in fields.items():
        if name == "metadata":
            row.metadata_ = value or {}
        elif name == "budget_duration":
            row.budget_duration = value
            row.budget_reset_at = after(value) if value else None
        else:
            setattr(row, name, value)


async def commit(session: AsyncSession, what: str) -> None:
    try:
        await session.commit()
    except IntegrityError as exc:
        await session.rollback()
        raise Conflict(f"{what} conflicts with an existing one (duplicate alias or id?)") from exc


async def require(session: AsyncSession, model: type, ident: str | None, label: str) -> None:
    if ident is not None and await session.get(model, ident) is None:
        raise BadRequest(f"{label} '{ident}' does not exist", param=label)


def page_args(page: int, size: int) -> tuple[int, int]:
    if page < 1:
        raise BadRequest("page must be 1 or more", param="page")
    if not 1 <= size <= 1000:
        raise BadRequest("size must be between 1 and 1000", param="size")
    return page, size


def pages(total: int, size: int) -> int:
    return (total + size - 1) // size


def sessions(services: Services):
    return services.db.sessions()
