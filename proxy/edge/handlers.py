"""FastAPI's side of the error mapping: every failure on a FastAPI route (admin, spend, health,
models) becomes the error envelope through errors.as_keystile, never a trace or HTML."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from backends.errors import BackendError

from ..core import Disconnected
from ..domain import LimitExceeded
from ..errors import BadRequest, Forbidden, KeystileError, NotFound, Unauthorized, as_keystile, error_body


def _param(error: dict) -> str | None:
    """The field a validation error is about, as a dotted path ("metadata", "messages.0.content")."""
    return ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path")) or None


def to_response(exc: KeystileError) -> Response:
    return Response(error_body(exc), status_code=exc.status, media_type="application/json", headers=exc.headers)


def install(app: FastAPI) -> None:
    async def keystile_error(_: Request, exc: Exception) -> Response:
        if isinstance(exc, Disconnected):
            return Response(status_code=499)  # hung up while sending the body: nobody to tell
        return to_response(as_keystile(exc))

    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        names = [_param(e) for e in errors if e.get("type") == "extra_forbidden"]
        if names:  # every unknown field named at once
            return to_response(BadRequest(f"unknown field{'s' * (len(names) > 1)}: {', '.join(map(str, names))}",
                                          param=names[0], code="unknown_field"))
        first = errors[0] if errors else {}
        param = _param(first)
        return to_response(BadRequest(f"{param or 'request'}: {first.get('msg', 'invalid')}", param=param))

    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        cls = {404: NotFound, 405: BadRequest, 401: Unauthorized, 403: Forbidden}.get(exc.status_code, KeystileError)
        err = cls(str(exc.detail), code={404: "not_found", 405: "method_not_allowed"}.get(exc.status_code),
                  headers=dict(exc.headers or {}))  # 405 carries Allow
        err.status = exc.status_code
        return to_response(err)

    for handled in (KeystileError, BackendError, LimitExceeded, Disconnected, Exception):
        app.add_exception_handler(handled, keystile_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
