"""GET /metrics: Prometheus' text format, for the master key, admin keys and the scrape token."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from ..admin import ERRORS
from ..auth.credentials import bearer_token
from ..errors import Forbidden
from ..services import ServicesDep

router = APIRouter(tags=["metrics"])


@router.get("/metrics", summary="Prometheus metrics (master key, admin key or keystile_settings.metrics_token)",
            response_class=Response, responses={
                200: {"content": {"text/plain": {}}, "description": "the text exposition format"},
                **{k: v for k, v in ERRORS.items() if k in (401, 403, 429, "default")}})
async def metrics(request: Request, services: ServicesDep) -> Response:
    token = services.options.metrics_token
    given = bearer_token(request.headers)
    if not (token and given and hmac.compare_digest(given.encode(), token.encode())):
        principal = await services.auth.authenticate(request)
        if not principal.may_administer:
            raise Forbidden("/metrics needs the master key, an admin key or the metrics token", code="admin_only")
    assert services.observers is not None
    return Response(services.observers.metrics.expose(), media_type=CONTENT_TYPE_LATEST)
