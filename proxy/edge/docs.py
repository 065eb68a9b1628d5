"""/openapi.json (and so /docs) describes the dialects' routes too, from their Endpoint
definitions: the same table the edge dispatches from, so documentation and dispatch cannot drift."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from ..dialects.base import Dialect, Endpoint

REF = "#/components/schemas/{model}"


def _operation(dialect: Dialect, endpoint: Endpoint) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "tags": [dialect.name],
        "summary": endpoint.summary,
        "security": [{"bearer": []}],
        "responses": {
            "200": {"description": "JSON answer, or an SSE stream (`text/event-stream`) when streaming"},
            "default": {"description": "error envelope"},
        },
    }
    if endpoint.model is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"$ref": REF.format(model=endpoint.model.__name__)}}}}
    if endpoint.param is not None:
        operation["parameters"] = [{"name": endpoint.param, "in": "path", "required": True,
                                    "schema": {"type": "string"}}]
    return operation


def install(app: FastAPI, dialects: Sequence[Dialect]) -> None:
    """Replace app.openapi with one that adds every dialect endpoint (under its first prefix)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            spec["components"].setdefault("securitySchemes", {})["bearer"] = {"type": "http", "scheme": "bearer"}
            for dialect in dialects:
                for endpoint in dialect.endpoints:
                    if endpoint.model is not None:
                        schema = endpoint.model.model_json_schema(ref_template=REF)
                        schemas.update(schema.pop("$defs", {}))
                        schemas[endpoint.model.__name__] = schema
                    path = spec["paths"].setdefault(dialect.prefixes[0] + endpoint.path, {})
                    path[endpoint.method.lower()] = _operation(dialect, endpoint)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
