"""What the admin routes share: the route class that reads their bodies (size limit, JSON errors
named), the admin caller dependency, the errors they declare, row serialization, applying field
updates, and commit-then-invalidate."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from datetime import datetime, timezone
from typing import Annotated, Any

import orjson
from fastapi import Depends, Query, Request
from fastapi.routing import APIRoute
from sqlalchemy import inspect
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from .db.models import Key, Team, User
from .domain import Principal
from .durations import after
from .errors import BadRequest, Conflict, Forbidden, PayloadTooLarge
from .protocol.fields import MAX_PAGE, ErrorEnvelope
from .services import Services, ServicesDep

ADMIN_BODY_LIMIT = 1024 * 1024


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorEnvelope, "description": description}


# Declared on every route that authenticates (through "default", any other status carries the
# envelope too, and FastAPI's 422, which Keystile never answers, is left out).
ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("bad input: malformed JSON, an unknown field or a bad value (named in `param`)"),
    401: _error("missing, unknown, expired or blocked key"),
    403: _error("this caller may not use this route"),
    429: _error("rate limited, over budget, or too many failed authentications from this address"),
    "default": _error("any other error"),
}
TOO_LARGE = {413: _error("request body over the size limit")}
NOT_FOUND = {404: _error("no such key, user or team")}
CONFLICT = {409: _error("alias or id already used")}
INFERENCE_ERRORS = {**ERRORS, 404: _error("unknown model"), **TOO_LARGE}


class AdminRequest(Request):
    """A request whose body is read at most once, up to ADMIN_BODY_LIMIT, and parsed by orjson."""

    async def body(self) -> bytes:
        if not hasattr(self, "_body"):
            declared = self.headers.get("content-length")
            if declared is not None and not declared.isdigit():
                raise BadRequest("invalid Content-Length header")
            if declared is not None and int(declared) > ADMIN_BODY_LIMIT:
                raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {ADMIN_BODY_LIMIT}")
            buf = bytearray()
            async for part in self.stream():
                buf += part
                if len(buf) > ADMIN_BODY_LIMIT:
                    raise PayloadTooLarge(f"request body exceeds the limit of {ADMIN_BODY_LIMIT} bytes")
            self._body = bytes(buf)
        return self._body

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                data = orjson.loads(await self.body())
            except orjson.JSONDecodeError as exc:
                raise BadRequest(f"malformed JSON: {exc}", code="invalid_json") from exc
            if not isinstance(data, dict):
                raise BadRequest("request body must be a JSON object")
            self._json = data
        return self._json


class AdminRoute(APIRoute):
    """FastAPI parses and validates the body against the route's model, so /openapi.json
    describes it; this reads it first with the size limit and turns a body that is not a JSON
    object into a 400 that says so (FastAPI would answer 'There was an error parsing the body')."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.body_field is not None:
            self.responses = {**TOO_LARGE, **self.responses}

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()
        body_required = self.body_field is not None and self.body_field.field_info.is_required()
        has_body = self.body_field is not None

        async def read_then_handle(request: Request) -> Response:
            request = AdminRequest(request.scope, request.receive)
            if has_body:
                if await request.body():
                    await request.json()
                elif body_required:
                    raise BadRequest("request body is empty; send a JSON object")
            return await handle(request)

        return read_then_handle


async def any_caller(request: Request, services: ServicesDep) -> Principal:
    return await services.auth.authenticate(request)


async def admin_caller(principal: Annotated[Principal, Depends(any_caller)]) -> Principal:
    if not principal.may_administer:
        raise Forbidden("this route needs the master key or an admin key", code="admin_only")
    return principal


Admin = Annotated[Principal, Depends(admin_caller)]
AnyCaller = Annotated[Principal, Depends(any_caller)]
Page = Annotated[int, Query(ge=1, le=MAX_PAGE, description="1-based page number")]
Size = Annotated[int, Query(ge=1, le=1000, description="rows per page")]


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


# Columns that always hold a value: null for them in a body means "leave as it is" (as LiteLLM
# drops None fields); for the others (limits, budget, alias, expiry, owner) null clears the value.
ALWAYS_SET = frozenset({"models", "aliases", "model_rpm_limit", "model_tpm_limit", "metadata", "blocked",
                        "key_type", "user_role", "spend"})


def apply(row: Key | User | Team, fields: dict[str, Any]) -> None:
    """Set the given fields on a row; a new budget_duration starts a new window."""
    for name, value in fields.items():
        if value is None and name in ALWAYS_SET:
            continue
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
    except DataError as exc:  # a backstop: the wire models bound every value before this
        await session.rollback()
        raise BadRequest(f"{what}: a value does not fit its column ({exc.orig})") from exc


async def require(session: AsyncSession, model: type, ident: str | None, label: str) -> None:
    if ident is not None and await session.get(model, ident) is None:
        raise BadRequest(f"{label} '{ident}' does not exist", param=label)


def pages(total: int, size: int) -> int:
    return (total + size - 1) // size


def sessions(services: Services):
    return services.db.sessions()
