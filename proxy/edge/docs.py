"""/openapi.json (and so /docs) describes the dialects' routes too, from their Endpoint
definitions: the same table the edge dispatches from, so documentation and dispatch cannot drift."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from ..dialects.base import PARAM, Dialect, Endpoint

REF = "#/components/schemas/{model}"


def _operation(dialect: Dialect, endpoint: Endpoint, path: str) -> dict[str, Any]:
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
    if names := PARAM.findall(path):
        operation["parameters"] = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                                   for name in names]
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
                    full = dialect.prefixes[0] + endpoint.path
                    spec["paths"].setdefault(full, {})[endpoint.method.lower()] = _operation(dialect, endpoint, full)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
