"""Liveness, readiness and per-deployment health."""

from __future__ import annotations

import asyncio
import time
from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from ..admin import ERRORS, NOT_FOUND, Admin, AdminRoute
from ..errors import NotFound
from ..protocol.fields import ModelName
from ..protocol.admin import HealthRestart
from ..protocol.answers import Health, Liveliness, Readiness, Restarted
from ..services import Services, ServicesDep

router = APIRouter(tags=["health"], route_class=AdminRoute)


@router.get("/health/liveliness", summary="The process is up (no auth)", response_model=Liveliness)
@router.get("/health/liveness", include_in_schema=False)
async def liveliness() -> dict:
    return {"status": "alive"}


@router.get("/health/readiness", summary="Database reachable and local models loaded (no auth)",
            response_model=Readiness, responses={503: {"model": Readiness, "description": "not ready"}})
async def readiness(services: ServicesDep) -> JSONResponse:
    db_ok = await services.db.ping()
    local = local_models(services)
    # An idle model (stopped after its idle_timeout) starts on the next request: it counts as ready.
    ready = db_ok and all(state["state"] in ("ready", "idle") for state in local.values())
    body = {"status": "ready" if ready else "not ready", "db": "connected" if db_ok else "unreachable",
            "keystile_version": _version("keystile"), "litellm_version": _version("litellm"), "local_models": local}
    return JSONResponse(body, status_code=200 if ready else 503)


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def local_models(services: Services) -> dict[str, dict]:
    """Each local model's state (loading, ready, restarting, failed with the crash) by deployment id."""
    return {d.id: d.backend.status() for d in services.router.deployments() if d.backend.local}


@router.get("/health", summary="Per-deployment state (auth); `?model=` checks that model's deployments only",
            response_model=Health,
            response_model_exclude_unset=True,  # `local_model` only on local deployments
            responses={k: v for k, v in ERRORS.items() if k in (400, 401, 429, "default")} | NOT_FOUND)
async def health(request: Request, services: ServicesDep, model: ModelName | None = None) -> dict:
    await services.auth.authenticate(request)
    if model is None:
        deployments = services.router.deployments()
    elif model in services.router:
        deployments = services.router.group(model) or []
    else:
        raise NotFound(f"model '{model}' does not exist or is not served here")
    results = await asyncio.gather(*(d.backend.health() for d in deployments), return_exceptions=True)
    now = time.monotonic()
    local = local_models(services)
    healthy, unhealthy = [], []
    for d, ok in zip(deployments, results):
        state = {"model": d.upstream, **d.state(now)}
        if d.id in local:
            state["local_model"] = local[d.id]
        (healthy if ok is True else unhealthy).append(state)
    return {"healthy_endpoints": healthy, "unhealthy_endpoints": unhealthy,
            "healthy_count": len(healthy), "unhealthy_count": len(unhealthy)}


@router.post("/health/restart", summary="Start a crashed local model's worker now (master key)",
             response_model=Restarted, response_model_exclude_unset=True, responses=ERRORS | NOT_FOUND)
async def restart(_: Admin, body: HealthRestart, services: ServicesDep) -> dict:
    if body.model not in services.router:
        raise NotFound(f"model '{body.model}' does not exist or is not served here")
    restarted = [d.id for d in services.router.group(body.model) or ()
                 if d.backend.retry()]
    return {"model": body.model, "restarted": restarted, "local_models": local_models(services)}
