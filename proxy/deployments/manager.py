"""Deployments made through the API: a local GGUF model on a managed llama.cpp worker, or a remote
OpenAI-compatible server, added to the model map under `api_name` and kept in the database.

queued -> starting (added to the map; requests get 503 while it loads) -> active, or failed with
the reason; stopped by POST .../stop (removed from the map, worker ended). At startup every
deployment not stopped or failed is started again. A watcher follows each one's state and writes
what happens to its log (read by the log stream)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select

from backends.base import Backend
from backends.http import ClientPool
from backends.registry import make_backend
from backends.router import Deployment, Router

from ..db.engine import Database
from ..db.models import ManagedDeployment
from ..durations import utcnow
from ..errors import BadRequest, Conflict

log = logging.getLogger("keystile.deployments")

QUEUED, STARTING, ACTIVE, FAILED, STOPPED = "queued", "starting", "active", "failed", "stopped"
LIVE = (QUEUED, STARTING, ACTIVE)
LOAD_TIMEOUT_S = 600.0


@dataclass
class Log:
    """A deployment's recent log lines, and a way to wait for the next one."""

    lines: deque[tuple[datetime, str]] = field(default_factory=lambda: deque(maxlen=1000))
    written: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def write(self, content: str) -> None:
        self.lines.append((utcnow(), content))
        self.written += 1
        self.changed.set()
        self.changed = asyncio.Event()

    def since(self, seen: int) -> list[tuple[datetime, str]]:
        """Lines written after the first `seen` (those still kept)."""
        new = self.written - seen
        return list(self.lines)[-new:] if new > 0 else []


@dataclass
class Live:
    row: ManagedDeployment
    backend: Backend
    deployment: Deployment
    watcher: asyncio.Task | None = None


class Deployments:
    def __init__(self, db: Database, router: Router, pool: ClientPool, request_timeout: float):
        self.db = db
        self.router = router
        self.pool = pool
        self.request_timeout = request_timeout
        self.live: dict[str, Live] = {}
        self.logs: dict[str, Log] = {}

    async def restore(self) -> None:
        async with self.db.sessions() as session:
            rows = (await session.scalars(select(ManagedDeployment).where(ManagedDeployment.status.in_(LIVE)))).all()
        for row in rows:
            self.log(row.id).write("gateway started: restoring this deployment")
            try:
                self._launch(row, self._backend(row))
            except (ValueError, TypeError) as exc:
                await self._set(row, FAILED, f"cannot be restored: {exc}")

    async def create(self, api_name: str, *, model_id: str | None, api_base: str | None, params: dict) -> ManagedDeployment:
        if api_name in self.router.groups:  # an exact name (a wildcard entry would match any)
            raise Conflict(f"a model named '{api_name}' is served already; pick another api_name", param="api_name")
        now = utcnow()
        row = ManagedDeployment(id=str(uuid.uuid4()), api_name=api_name, model_id=model_id, api_base=api_base,
                                params=params, status=QUEUED, created_at=now, updated_at=now)
        try:
            backend = self._backend(row)
        except (ValueError, TypeError) as exc:
            raise BadRequest(str(exc), param="model_id" if model_id else "api_base", code="deployment_error") from exc
        async with self.db.sessions() as session:
            session.add(row)
            await session.commit()
        self.log(row.id).write(f"deployment queued: {model_id or api_base} as '{api_name}'")
        self._launch(row, backend)
        return row

    async def get(self, deployment_id: str) -> ManagedDeployment | None:
        async with self.db.sessions() as session:
            return await session.get(ManagedDeployment, deployment_id)

    async def list(self) -> list[ManagedDeployment]:
        async with self.db.sessions() as session:
            return list((await session.scalars(select(ManagedDeployment)
                                               .order_by(ManagedDeployment.created_at))).all())

    async def stop(self, row: ManagedDeployment) -> ManagedDeployment:
        live = self.live.pop(row.id, None)
        if live is not None:
            await self._end(live)
        if row.status in LIVE:
            await self._set(row, STOPPED, None)
            self.log(row.id).write("deployment stopped")
        return row

    def log(self, deployment_id: str) -> Log:
        return self.logs.setdefault(deployment_id, Log())

    def pid(self, deployment_id: str) -> int | None:
        live = self.live.get(deployment_id)
        return live.backend.status().get("pid") if live is not None else None

    async def aclose(self) -> None:
        """Shutdown: workers end, the rows keep their state (restored at the next start)."""
        for live in list(self.live.values()):
            await self._end(live)
        self.live.clear()

    # -- running ---------------------------------------------------------------------------------

    def _backend(self, row: ManagedDeployment) -> Backend:
        params = dict(row.params)
        if row.model_id is not None:
            params["model"] = f"llamacpp/{row.model_id}"
        else:
            params["model"] = f"openai/{params.pop('model', None) or row.api_name}"
            params["api_base"] = row.api_base
        return make_backend(row.api_name, params, pool=self.pool, timeout=self.request_timeout)

    def _launch(self, row: ManagedDeployment, backend: Backend) -> None:
        deployment = Deployment(model_name=row.api_name, id=f"deploy-{row.id[:8]}", backend=backend,
                                upstream=row.model_id or f"openai/{row.api_name}")
        live = Live(row, backend, deployment)
        self.live[row.id] = live
        live.watcher = asyncio.create_task(self._watch(live), name=f"deployment:{row.id}")

    async def _watch(self, live: Live) -> None:
        row, backend, out = live.row, live.backend, self.log(live.row.id)
        try:
            await self._set(row, STARTING, None)
            out.write("starting " + (f"a llama.cpp worker for {row.model_id}" if row.model_id else
                                     f"a connection to {row.api_base}"))
            await backend.start()
            self.router.add(live.deployment)
            last: dict = {}
            deadline = asyncio.get_running_loop().time() + LOAD_TIMEOUT_S
            while True:
                status = backend.status()
                state = status.get("state")
                if status != last:
                    out.write(f"worker {state}" + "".join(f", {k}: {v}" for k, v in status.items() if k != "state"))
                if state in ("ready", "idle") and row.status != ACTIVE:
                    await self._set(row, ACTIVE, None)
                    out.write(f"deployment active: serving model '{row.api_name}' on /v1")
                elif state == "failed" or (row.status != ACTIVE and asyncio.get_running_loop().time() > deadline):
                    reason = status.get("error") or f"not loaded within {LOAD_TIMEOUT_S:.0f} s"
                    await self._set(row, FAILED, str(reason))
                    out.write(f"deployment failed: {reason}")
                    self.live.pop(row.id, None)
                    await self._end(live, watcher=False)
                    return
                last = status
                await asyncio.sleep(0.5)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # starting it failed: say why, leave nothing behind
            log.exception("deployment %s failed", row.id)
            await self._set(row, FAILED, f"{type(exc).__name__}: {exc}")
            out.write(f"deployment failed: {exc}")
            self.live.pop(row.id, None)
            await self._end(live, watcher=False)

    async def _end(self, live: Live, *, watcher: bool = True) -> None:
        if watcher and live.watcher is not None:
            live.watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await live.watcher
        self.router.remove(live.deployment)
        await live.backend.aclose()

    async def _set(self, row: ManagedDeployment, status: str, error: str | None) -> None:
        row.status, row.error, row.updated_at = status, error, utcnow()
        async with self.db.sessions() as session:
            await session.merge(row)
            await session.commit()
