"""Deployments made through the API: a local GGUF model on a managed llama.cpp worker, or a remote
OpenAI-compatible server, added to the model map under `api_name` and kept in the database.

queued -> starting (added to the map; requests get 503 while it loads) -> active, or failed with
the reason; stopped by POST .../stop (removed from the map, worker ended). A watcher follows each
one's state and writes what happens to its log (read by the log stream).

The database is the truth every gateway process follows: each process polls the deployments table
every FOLLOW_S seconds and starts here what is live there and not yet here (at startup: every live
deployment), and ends here what was stopped or failed through any process. So under
`keystile serve --workers N` (or several gateways on one database) every process serves every
deployment from a worker of its own, like the local models of config.yaml: a local deployment
costs N times its memory. State changes are guarded updates (`WHERE status IN ...`), so a process
still loading cannot bring a stopped deployment back. The database being away is logged once; the
poll backs off and the watchers' writes wait for it, while what runs keeps serving."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import or_, select, update

from backends.base import Backend
from backends.http import ClientPool
from backends.registry import make_backend
from backends.router import Deployment, Router

from ..db.engine import Database
from ..db.models import ManagedDeployment
from ..durations import utcnow
from ..errors import BadRequest, Conflict
from ..outage import Outage

log = logging.getLogger("keystile.deployments")

QUEUED, STARTING, ACTIVE, FAILED, STOPPED = "queued", "starting", "active", "failed", "stopped"
LIVE = (QUEUED, STARTING, ACTIVE)
LOAD_TIMEOUT_S = 600.0
FOLLOW_S = 1.0  # how often each process looks for deployments started or stopped through another
MAX_BACKOFF_S = 10.0


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
        self._changing = asyncio.Lock()  # one of: following the table, creating, stopping
        self._follower: asyncio.Task | None = None
        self.outage = Outage(log, "deployments")

    async def start(self) -> None:
        """Start every live deployment, then follow the table."""
        await self.follow("gateway started: restoring this deployment")
        self._follower = asyncio.create_task(self._follow(), name="deployments-follower")

    async def follow(self, why: str) -> None:
        """Make this process run what the table says is live: start what is missing here, end what
        was stopped or failed elsewhere."""
        async with self._changing:
            async with self.db.sessions() as session:
                rows = (await session.scalars(select(ManagedDeployment).where(or_(
                    ManagedDeployment.status.in_(LIVE), ManagedDeployment.id.in_(list(self.live)))))).all()
            wanted = {row.id: row for row in rows if row.status in LIVE}
            for row in wanted.values():
                if row.id not in self.live:
                    self.log(row.id).write(why)
                    log.info("deployment '%s' (%s): %s", row.api_name, row.id, why)
                    try:
                        self._launch(row, self._backend(row))
                    except (ValueError, TypeError) as exc:
                        await self._settle(row, FAILED, f"cannot be started: {exc}")
            for deployment_id in [d for d in self.live if d not in wanted]:
                live = self.live.pop(deployment_id)
                row = next((r for r in rows if r.id == deployment_id), None)
                why = f"deployment {row.status if row else 'deleted'} through another gateway process: ending it here"
                self.log(deployment_id).write(why)
                log.info("deployment '%s' (%s): %s", live.row.api_name, deployment_id, why)
                await self._end(live)

    async def _follow(self) -> None:
        delay = FOLLOW_S
        while True:
            await asyncio.sleep(delay)
            try:
                await self.follow("deployed through another gateway process: starting it here")
                self.outage.ended()
                delay = FOLLOW_S
            except Exception as exc:  # the database is away: what runs keeps running
                self.outage.failed(exc)
                delay = min(delay * 2, MAX_BACKOFF_S)

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
        async with self._changing, self.db.sessions() as session:
            taken = await session.scalar(select(ManagedDeployment.id).where(  # made through another process
                ManagedDeployment.api_name == api_name, ManagedDeployment.status.in_(LIVE)).limit(1))
            if taken is not None:
                raise Conflict(f"a model named '{api_name}' is deployed already; pick another api_name",
                               param="api_name")
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
        """Stopped in the database first (the other processes end it within FOLLOW_S), then here."""
        async with self._changing:
            if await self._move(row, STOPPED, None, LIVE):
                self.log(row.id).write("deployment stopped")
            live = self.live.pop(row.id, None)
            if live is not None:
                await self._end(live)
        return row

    def log(self, deployment_id: str) -> Log:
        return self.logs.setdefault(deployment_id, Log())

    def pid(self, deployment_id: str) -> int | None:
        live = self.live.get(deployment_id)
        return live.backend.status().get("pid") if live is not None else None

    async def aclose(self) -> None:
        """Shutdown: workers end, the rows keep their state (restored at the next start)."""
        if self._follower is not None:
            self._follower.cancel()
            await asyncio.gather(self._follower, return_exceptions=True)
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
        loop = asyncio.get_running_loop()
        try:
            out.write("starting " + (f"a llama.cpp worker for {row.model_id}" if row.model_id else
                                     f"a connection to {row.api_base}"))
            await backend.start()
            self.router.add(live.deployment)
            await self._settle(row, STARTING, None, (QUEUED, ACTIVE))  # waits while the database is away
            last: dict = {}
            loaded = False
            deadline = loop.time() + LOAD_TIMEOUT_S
            while True:
                status = backend.status()
                state = status.get("state")
                if status != last:
                    out.write(f"worker {state}" + "".join(f", {k}: {v}" for k, v in status.items() if k != "state"))
                if state in ("ready", "idle") and not loaded:
                    loaded = True
                    await self._settle(row, ACTIVE, None, (QUEUED, STARTING))
                    out.write(f"deployment active: serving model '{row.api_name}' on /v1")
                elif state == "failed" or (not loaded and loop.time() > deadline):
                    await self._fail(live, str(status.get("error") or f"not loaded within {LOAD_TIMEOUT_S:.0f} s"))
                    return
                last = status
                await asyncio.sleep(0.5)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # starting it failed: say why, leave nothing behind
            log.exception("deployment %s failed", row.id)
            await self._fail(live, f"{type(exc).__name__}: {exc}")

    async def _fail(self, live: Live, reason: str) -> None:
        await self._settle(live.row, FAILED, reason, LIVE)
        self.log(live.row.id).write(f"deployment failed: {reason}")
        if self.live.get(live.row.id) is live:
            del self.live[live.row.id]
        await self._end(live, watcher=False)

    async def _end(self, live: Live, *, watcher: bool = True) -> None:
        if watcher and live.watcher is not None:
            live.watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await live.watcher
        self.router.remove(live.deployment)
        await live.backend.aclose()

    async def _settle(self, row: ManagedDeployment, status: str, error: str | None,
                      sources: tuple[str, ...] = LIVE) -> bool:
        """`_move`, waiting for the database while it is away (a watcher's write must not be lost,
        nor kill the watcher)."""
        return bool(await self.outage.persist(lambda: self._move(row, status, error, sources), max_delay=MAX_BACKOFF_S))

    async def _move(self, row: ManagedDeployment, status: str, error: str | None, sources: tuple[str, ...]) -> bool:
        """The row to `status` if it is in one of `sources` now (False if not: stopped or failed
        meanwhile, maybe through another process)."""
        now = utcnow()
        async with self.db.sessions() as session:
            result = await session.execute(update(ManagedDeployment).where(
                ManagedDeployment.id == row.id, ManagedDeployment.status.in_(sources))
                .values(status=status, error=error, updated_at=now))
            await session.commit()
        if result.rowcount != 1:
            return False
        row.status, row.error, row.updated_at = status, error, now
        return True
