"""One exception tree for the gateway, and the single place that classifies every failure:
`as_keystile` turns backend errors (backends.errors), limit refusals (domain.LimitExceeded) and
validation failures into a KeystileError with its HTTP status, type, code and headers. A dialect
renders that into its own envelope; OpenAI's, {"error": {"message", "type", "param", "code"}}, is
`error_body`. No HTTP framework here: the edge (proxy/edge/handlers.py) sends the answers.
"""

from __future__ import annotations

import logging
import math

import orjson
from pydantic import ValidationError

from backends import errors as be

from .domain import LimitExceeded
from .limits.windows import format_reset

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


class MethodNotAllowed(KeystileError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


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


class WebSocketRefused(KeystileError):
    status = 426
    type = "invalid_request_error"
    code = "websocket_unsupported"

    def __init__(self, message: str = "this gateway serves its APIs over HTTP only (no WebSocket transport); "
                                      "POST the request instead"):
        super().__init__(message)


class UpstreamAnswered(KeystileError):
    """An upstream's error relayed as it is (a pass-through dialect's upstream): its status and
    body (`raw`), which that dialect sends unchanged."""

    type = "upstream_error"

    def __init__(self, exc: be.UpstreamHTTPError, raw: bytes):
        wait = exc.retry_after if exc.retry_after is not None else 1.0 if exc.status == 429 else None
        super().__init__(exc.message, param=exc.param, code=exc.code, headers=None if wait is None else
                         {"Retry-After": _seconds(min(wait, MAX_RETRY_AFTER_S))})
        self.status = exc.status
        self.raw = raw


def from_backend(exc: be.BackendError) -> KeystileError:
    """Translate a backend's error into the gateway's tree (one mapping, used everywhere)."""
    match exc:
        case be.UpstreamHTTPError(body=bytes() as raw):
            return UpstreamAnswered(exc, raw)
        case be.ModelLoading():
            return Unavailable(exc.message or "model is still loading, retry shortly", headers={"Retry-After": "5"})
        case be.ModelCrashed():
            return Unavailable(exc.message, code="model_crashed", headers={"Retry-After": _seconds(exc.retry_after)})
        case be.BackendOverloaded():
            return RateLimited(exc.message or "model queue is full", code="queue_full", headers={"Retry-After": "1"})
        case be.UpstreamTimeout():
            return UpstreamTimedOut(exc.message or "upstream timed out")
        case be.ModelRemoved():
            return NotFound(exc.message)
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

def from_limit(exc: LimitExceeded) -> RateLimited:
    """A refusal by a rate limit or budget: 429 naming the limit, `Retry-After` in whole seconds
    (at least 1) whenever a reset is known. Budgets use code `budget_exceeded`, a deployment's own
    rpm/tpm `deployment_rate_limited`, the rest `rate_limit_exceeded`."""
    code = ("budget_exceeded" if exc.kind == "budget" else
            "deployment_rate_limited" if exc.scope_type == "deployment" else "rate_limit_exceeded")
    headers = {"Retry-After": _seconds(exc.reset_s)} if exc.reset_s is not None else {}
    if exc.kind in ("rpm", "tpm") and exc.reset_s is not None and exc.scope_type != "deployment":
        # OpenAI's trio for the caller's limit that refused (a deployment's own limit is not the caller's)
        unit = "requests" if exc.kind == "rpm" else "tokens"
        headers.update({f"x-ratelimit-limit-{unit}": "%d" % exc.limit,
                        f"x-ratelimit-remaining-{unit}": "%d" % exc.remaining,
                        f"x-ratelimit-reset-{unit}": format_reset(exc.reset_s)})
    return RateLimited(exc.message, code=code, headers=headers)


def from_validation(exc: ValidationError) -> BadRequest:
    """A body that failed its wire model: the first problem, with the field named in `param`."""
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first["loc"]) or None
    return BadRequest(f"{param}: {first['msg']}" if param else first["msg"], param=param)


def error_body(exc: KeystileError) -> bytes:
    return orjson.dumps({"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}})


def as_keystile(exc: BaseException) -> KeystileError:
    if isinstance(exc, KeystileError):
        return exc
    if isinstance(exc, be.BackendError):
        return from_backend(exc)
    if isinstance(exc, LimitExceeded):
        return from_limit(exc)
    if isinstance(exc, ValidationError):
        return from_validation(exc)
    log.exception("unhandled error", exc_info=exc)
    return KeystileError("internal error")
