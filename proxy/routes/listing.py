"""GET /routes: every route this gateway serves, in LiteLLM's shape (`{"routes": [{"path",
"methods", "name", "endpoint"}]}`): the FastAPI routes, then the dialects' (served by the edge)
under each of their prefixes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.routing import iter_route_contexts

from ..admin import ERRORS, AdminRoute, AnyCaller
from ..protocol.answers import Routes

router = APIRouter(tags=["health"], route_class=AdminRoute)


@router.get("/routes", summary="Every route served (LiteLLM's list; any key)", response_model=Routes,
            responses={k: v for k, v in ERRORS.items() if k in (401, 429, "default")})
async def routes(request: Request, _: AnyCaller) -> dict:
    out = [{"path": r.path, "methods": sorted(r.methods or ()), "name": r.name, "endpoint": r.endpoint.__name__}
           for r in iter_route_contexts(request.app.routes)]  # included routers' routes with their prefixes
    for dialect in request.app.state.dialects:
        for prefix in dialect.prefixes:
            for endpoint in dialect.endpoints:
                out.append({"path": prefix + endpoint.path, "methods": [endpoint.method],
                            "name": f"{dialect.name}:{endpoint.operation or endpoint.path.strip('/')}",
                            "endpoint": f"{type(dialect).__name__}.handle"})
    return {"routes": out}
