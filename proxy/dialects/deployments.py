"""Deployment management (seed 004), admin only:

    POST /api/v1/deploy                               {"model_id" | "api_base", "api_name", ...}
                                                      -> {"status": "queued", "deployment_id", "model_id", "monitor_url"}
    GET  /api/v1/deployments                          {"deployments": [...]}
    GET  /api/v1/deployments/{deployment_id}/status   queued | starting | active | failed (error) | stopped
    POST /api/v1/deployments/{deployment_id}/stop
    GET  /api/v1/deployments/{deployment_id}/logs/stream   SSE: deployment_info, metadata, log events

`model_id` is a GGUF path or `package:<module>/<file.gguf>` run by a llama.cpp worker on this host;
`api_base` (with `model`, `api_key`) registers a remote OpenAI-compatible server instead. Either
is then served as `api_name` on the OpenAI routes (proxy/deployments/manager.py does the work)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import Any
from urllib.parse import parse_qs

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator

from ..core import Gateway
from ..db.models import ManagedDeployment
from ..deployments.manager import LIVE, Deployments
from ..deployments.procinfo import ProcessSampler
from ..domain import Principal
from ..durations import utcnow
from ..errors import BadRequest, Forbidden, NotFound
from .base import Dialect, Endpoint, Event, Incoming, Reply, parse_json, validate

METADATA_EVERY_S = 5.0


class DeployRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_name: StrictStr = Field(min_length=1, max_length=255, description="the model name clients will use")
    model_id: StrictStr | None = Field(default=None, min_length=1, description="GGUF path or package:<module>/<file>")
    api_base: StrictStr | None = Field(default=None, pattern=r"^https?://", description="a remote OpenAI-compatible server")
    model: StrictStr | None = Field(default=None, description="with api_base: the server's model name")
    api_key: StrictStr | None = None
    n_ctx: StrictInt | None = Field(default=None, ge=128)
    n_threads: StrictInt | None = Field(default=None, ge=1)
    max_queue: StrictInt | None = Field(default=None, ge=0)
    timeout: float | None = Field(default=None, gt=0)
    idle_timeout: float | None = Field(default=None, gt=0, description="seconds without requests before the "
                                       "worker is stopped; the next request starts it again")
    min_free_memory_mb: StrictInt | None = Field(default=None, ge=0, description="with idle_timeout: memory that "
                                                 "must stay available when the idle worker is started again")
    user_id: StrictStr | None = None
    ssh_config: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_target(self) -> DeployRequest:
        if (self.model_id is None) == (self.api_base is None):
            raise ValueError("give model_id (a GGUF file on this host) or api_base (a remote server), not both")
        if self.idle_timeout is not None and self.model_id is None:
            raise ValueError("idle_timeout applies to a model_id deployment (a worker on this host)")
        if self.ssh_config is not None:
            raise ValueError("deploying onto other hosts (ssh_config) is not supported; "
                             "deployments run on this gateway's host")
        return self

    def params(self) -> dict:
        return self.model_dump(exclude_none=True, exclude={"api_name", "model_id", "api_base", "user_id", "ssh_config"})


def render(row: ManagedDeployment, base: str) -> dict:
    out = {"status": row.status, "deployment_id": row.id, "model_id": row.model_id or row.api_base,
           "api_name": row.api_name, "api_url": f"{base}/v1", "created_at": _iso(row.created_at),
           "updated_at": _iso(row.updated_at)}
    if row.error:
        out["error"] = row.error
    return out


def _iso(t) -> str:
    return t.replace(tzinfo=None).isoformat(timespec="seconds")


def _base(incoming: Incoming) -> str:
    host = (incoming.header(b"host") or b"127.0.0.1").decode("latin-1")
    return f"http://{host}"


class DeploymentsDialect(Dialect):
    name = "deployments"
    prefixes = ("/api/v1",)
    endpoints = (
        Endpoint("/deploy", None, DeployRequest, "Deploy a GGUF model on this host, or register a remote server"),
        Endpoint("/deployments", None, None, "Every deployment made through the API", method="GET"),
        Endpoint("/deployments/{deployment_id}/status", None, None, "A deployment's state", method="GET"),
        Endpoint("/deployments/{deployment_id}/stop", None, None, "Stop a deployment"),
        Endpoint("/deployments/{deployment_id}/logs/stream", None, None, "SSE: info, process metadata, log lines",
                 method="GET"),
    )

    def __init__(self) -> None:
        self.manager: Deployments | None = None

    async def start(self, services) -> None:
        self.manager = Deployments(services.db, services.router, services.pool, services.options.request_timeout)
        await self.manager.start()

    async def aclose(self) -> None:
        if self.manager is not None:
            await self.manager.aclose()

    async def handle(self, gateway: Gateway, principal: Principal, endpoint: Endpoint, incoming: Incoming) -> Reply:
        manager = self.manager
        assert manager is not None, "DeploymentsDialect.start was not called"
        if not principal.may_administer:
            raise Forbidden("deployments are managed with an admin key", code="admin_only")
        base = _base(incoming)
        if endpoint.path == "/deploy":
            req = validate(DeployRequest, parse_json(await incoming.read_body()))
            assert isinstance(req, DeployRequest)
            row = await manager.create(req.api_name, model_id=req.model_id, api_base=req.api_base, params=req.params())
            return _json({"status": "queued", "deployment_id": row.id, "model_id": req.model_id or req.api_base,
                          "monitor_url": f"{base}/api/v1/deployments/{row.id}/status"})
        if endpoint.path == "/deployments":
            return _json({"deployments": [render(r, base) for r in await manager.list()]})
        row = await manager.get(incoming.params["deployment_id"])
        if row is None:
            raise NotFound(f"deployment '{incoming.params['deployment_id']}' does not exist", param="deployment_id",
                           code="deployment_not_found")
        if endpoint.path.endswith("/stop"):
            return _json(render(await manager.stop(row), base))
        if endpoint.path.endswith("/status"):
            return _json(render(row, base))
        timestamps = _flag(incoming.query, "timestamps", True)
        return Reply(media_type=b"text/event-stream", events=self._logs(manager, row, base, timestamps))

    async def _logs(self, manager: Deployments, row: ManagedDeployment, base: str,
                    timestamps: bool) -> AsyncGenerator[Event, None]:
        info = render(row, base)
        yield b"deployment_info", orjson.dumps({k: info[k] for k in ("deployment_id", "model_id", "status", "api_name")})
        sampler, out, seen = ProcessSampler(), manager.log(row.id), 0
        loop = asyncio.get_running_loop()
        next_metadata = loop.time()
        while True:
            if loop.time() >= next_metadata:
                yield b"metadata", orjson.dumps({"deployment_id": row.id, "timestamp": utcnow().isoformat(),
                                                 **sampler.sample(manager.pid(row.id))})
                next_metadata = loop.time() + METADATA_EVERY_S
            for at, content in out.since(seen):
                line = {"timestamp": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"), "content": content}
                if not timestamps:
                    del line["timestamp"]
                yield b"log", orjson.dumps(line)
            seen = out.written
            if row.id not in manager.live and (await manager.get(row.id) or row).status not in LIVE:
                return  # stopped or failed: nothing more will be written
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(out.changed.wait(), max(0.05, next_metadata - loop.time()))


def _flag(query: bytes, name: str, default: bool) -> bool:
    values = parse_qs(query.decode("latin-1")).get(name)
    if not values:
        return default
    if values[0].lower() in ("true", "1", "yes"):
        return True
    if values[0].lower() in ("false", "0", "no"):
        return False
    raise BadRequest(f"{name}: true or false", param=name)


def _json(data: dict) -> Reply:
    return Reply(body=orjson.dumps(data))


DIALECT = DeploymentsDialect
