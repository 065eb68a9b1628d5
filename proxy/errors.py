"""One exception tree for the gateway, and the single place that turns errors into HTTP answers.

Every error body is {"error": {"message", "type", "param", "code"}} with the matching status.
Backend errors (backends.errors) are mapped here too, so no route ever formats an error itself.
"""

from __future__ import annotations

import logging
import math

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from backends import errors as be

log = logging.getLogger("keystile")

MAX_RETRY_AFTER_S = 60.0
"""The longest Retry-After passed on from an upstream: clients that honour it should not stall longer."""


class KeystileError(Exception):
    status = 500
    type = "internal_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}


class BadRequest(KeystileError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(KeystileError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(KeystileError):
    status = 403
    type = "permission_error"


class NotFound(KeystileError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class Conflict(KeystileError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class PayloadTooLarge(KeystileError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RequestTimedOut(KeystileError):
    """The client did not send its request in time (the HTTP server's header timeout)."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class HeadersTooLarge(KeystileError):
    status = 431
    type = "invalid_request_error"
    code = "request_header_too_large"


class RateLimited(KeystileError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class UpstreamFailed(KeystileError):
    status = 502
    type = "upstream_error"
    code = "bad_gateway"


class Unavailable(KeystileError):
    status = 503
    type = "service_unavailable"
    code = "model_loading"


class UpstreamTimedOut(KeystileError):
    status = 504
    type = "timeout_error"
    code = "upstream_timeout"


def from_backend(exc: be.BackendError) -> KeystileError:
    """Translate a backend's error into the gateway's tree (one mapping, used everywhere)."""
    match exc:
        case be.ModelLoading():
            return Unavailable(exc.message or "model is still loading, retry shortly", headers={"Retry-After": "5"})
        case be.ModelCrashed():
            return Unavailable(exc.message, code="model_crashed", headers={"Retry-After": _seconds(exc.retry_after)})
        case be.DeploymentAtCapacity():
            return RateLimited(exc.message, code="deployment_rate_limited",
                               headers={"Retry-After": _seconds(exc.retry_after)})
        case be.BackendOverloaded():
            return RateLimited(exc.message or "model queue is full", code="queue_full", headers={"Retry-After": "1"})
        case be.UpstreamTimeout():
            return UpstreamTimedOut(exc.message or "upstream timed out")
        case be.NotSupported():
            return BadRequest(exc.message, code="unsupported")
        case be.UpstreamHTTPError() if 400 <= exc.status < 500 and exc.status not in (401, 403, 408, 429):
            # The caller's request was refused by the upstream: keep its status and message.
            err = BadRequest(exc.message, param=exc.param, code=exc.code)
            err.status = 404 if exc.status == 404 else 400 if exc.status != 413 else 413
            return err
        case be.UpstreamHTTPError() if exc.status == 429:
            # The upstream's Retry-After is kept (at most MAX_RETRY_AFTER_S); 1 s when it gave none.
            wait = min(exc.retry_after if exc.retry_after is not None else 1.0, MAX_RETRY_AFTER_S)
            return RateLimited(f"upstream rate limit: {exc.message}", code="upstream_rate_limited",
                               headers={"Retry-After": _seconds(wait)})
        case _:
            return UpstreamFailed(exc.message or "upstream error")


def _seconds(delay: float) -> str:
    """A Retry-After value: whole seconds, at least 1."""
    return str(max(1, math.ceil(delay)))


def error_body(exc: KeystileError) -> bytes:
    return orjson.dumps({"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}})


def to_response(exc: KeystileError) -> Response:
    return Response(error_body(exc), status_code=exc.status, media_type="application/json", headers=exc.headers)


def as_keystile(exc: BaseException) -> KeystileError:
    if isinstance(exc, KeystileError):
        return exc
    if isinstance(exc, be.BackendError):
        return from_backend(exc)
    log.exception("unhandled error", exc_info=exc)
    return KeystileError("internal error")


def _param(error: dict) -> str | None:
    """The field a validation error is about, as a dotted path ("metadata", "messages.0.content")."""
    return ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path")) or None


def install(app: FastAPI) -> None:
    """Register the handlers that make every failure an error envelope, never a trace or HTML."""

    async def keystile_error(_: Request, exc: Exception) -> Response:
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

    app.add_exception_handler(KeystileError, keystile_error)
    app.add_exception_handler(be.BackendError, keystile_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, keystile_error)
