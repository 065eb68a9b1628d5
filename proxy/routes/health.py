"""Liveness, readiness and per-deployment health."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from ..services import ServicesDep

router = APIRouter(tags=["health"])


@router.get("/health/liveliness", summary="The process is up (no auth)")
@router.get("/health/liveness", include_in_schema=False)
async def liveliness() -> dict:
    return {"status": "alive"}


@router.get("/health/readiness", summary="Database reachable and local models loaded (no auth)")
async def readiness(services: ServicesDep) -> JSONResponse:
    db_ok = await services.db.ping()
    local = {d.id: bool(d.backend.ready) for d in services.router.deployments() if hasattr(d.backend, "ready")}
    ready = db_ok and all(local.values())
    body = {"status": "ready" if ready else "not ready", "db": "connected" if db_ok else "unreachable",
            "local_models": local}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/health", summary="Per-deployment state (auth)")
async def health(request: Request, services: ServicesDep) -> dict:
    await services.auth.authenticate(request)
    deployments = services.router.deployments()
    results = await asyncio.gather(*(d.backend.health() for d in deployments), return_exceptions=True)
    now = time.monotonic()
    healthy, unhealthy = [], []
    for d, ok in zip(deployments, results):
        (healthy if ok is True else unhealthy).append(d.state(now))
    return {"healthy_endpoints": healthy, "unhealthy_endpoints": unhealthy,
            "healthy_count": len(healthy), "unhealthy_count": len(unhealthy)}
