"""create_app(settings) -> FastAPI (admin, spend, health, models, /docs), and factory() -> the edge
in front of it, serving the dialects. The lifespan builds the one Services object and closes it."""

from __future__ import annotations

import gc
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp

from . import dialects
from .admin import INFERENCE_ERRORS
from .edge import handlers
from .edge.asgi import Edge
from .routes import health, keys, listing, members, metrics, model_admin, models, organizations, principals, spend
from .services import Services
from .settings import Settings, load_config


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    config = settings.apply(load_config(settings.keystile_config))  # fail fast, before the server binds

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        services = await Services.start(settings, config)
        app.state.services = services
        for dialect in app.state.dialects:
            await dialect.start(services)
        # Everything built so far lives as long as the process: keep it out of every collection.
        gc.collect()
        gc.freeze()
        # Requests allocate many short-lived objects and almost no cycles: collect the young
        # generation every 50,000 allocations instead of 700 (measured: +0.05 of the relay's
        # throughput at c=32, see bench/README.md).
        gc.set_threshold(50_000, 20, 100)
        try:
            yield
        finally:
            for dialect in app.state.dialects:
                await dialect.aclose()
            await services.aclose()

    app = FastAPI(title="Keystile", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible LLM gateway with keys, limits and accounting.")
    handlers.install(app)
    app.state.dialects = dialects.load()  # served (and documented) by the edge, factory() below
    for prefix in ("/v1", "/openai/v1", ""):  # the root too: LiteLLM serves /models, SDKs without /v1 call it
        app.include_router(models.router, prefix=prefix, include_in_schema=prefix == "/v1", responses=INFERENCE_ERRORS)
    app.include_router(health.router)
    app.include_router(listing.router)
    app.include_router(metrics.router)
    for admin_router in (keys.router, principals.teams, members.router, principals.users, organizations.router,
                         spend.router, model_admin.router):
        app.include_router(admin_router)
    return app


def factory() -> ASGIApp:
    """Entry point for uvicorn (`proxy.app:factory`), reading settings from the environment. The
    dialects' routes are dispatched by the edge, ahead of FastAPI's middleware and routing; the
    rest is FastAPI. With traces on, each request first takes the trace context its client sent."""
    settings = Settings()
    app = create_app(settings)
    edge = Edge(app, app.state.dialects)
    if not settings.otel_exporter_otlp_endpoint:
        return edge
    try:
        from .observe.traces import ContinueTraces
    except ImportError:  # no SDK: the lifespan refuses to start and says what to install
        return edge
    return ContinueTraces(edge)
