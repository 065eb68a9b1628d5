"""Liveness, readiness and per-deployment health."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse

from ..admin import Admin
from ..errors import NotFound
from ..services import Services, ServicesDep

router = APIRouter(tags=["health"])


@router.get("/health/liveliness", summary="The process is up (no auth)")
@router.get("/health/liveness", include_in_schema=False)
async def liveliness() -> dict:
    return {"status": "alive"}


@router.get("/health/readiness", summary="Database reachable and local models loaded (no auth)")
async def readiness(services: ServicesDep) -> JSONResponse:
    db_ok = await services.db.ping()
    local = local_models(services)
    ready = db_ok and all(state["state"] == "ready" for state in local.values())
    body = {"status": "ready" if ready else "not ready", "db": "connected" if db_ok else "unreachable",
            "local_models": local}
    return JSONResponse(body, status_code=200 if ready else 503)


def local_models(services: Services) -> dict[str, dict]:
    """Each local model's state (loading, ready, restarting, failed with the crash) by deployment id."""
    return {d.id: d.backend.status() for d in services.router.deployments() if hasattr(d.backend, "status")}


@router.get("/health", summary="Per-deployment state (auth)")
async def health(request: Request, services: ServicesDep) -> dict:
    await services.auth.authenticate(request)
    deployments = services.router.deployments()
    results = await asyncio.gather(*(d.backend.health() for d in deployments), return_exceptions=True)
    now = time.monotonic()
    local = local_models(services)
    healthy, unhealthy = [], []
    for d, ok in zip(deployments, results):
        state = d.state(now)
        if d.id in local:
            state["local_model"] = local[d.id]
        (healthy if ok is True else unhealthy).append(state)
    return {"healthy_endpoints": healthy, "unhealthy_endpoints": unhealthy,
            "healthy_count": len(healthy), "unhealthy_count": len(unhealthy)}


class RestartBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="a public model name; its crashed or failed local deployments start again now")


@router.post("/health/restart", summary="Start a crashed local model's worker now (master key)")
async def restart(_: Admin, body: RestartBody, services: ServicesDep) -> dict:
    if body.model not in services.router:
        raise NotFound(f"model '{body.model}' does not exist or is not served here")
    restarted = [d.id for d in services.router.groups[body.model]
                 if hasattr(d.backend, "retry") and d.backend.retry()]
    return {"model": body.model, "restarted": restarted, "local_models": local_models(services)}
