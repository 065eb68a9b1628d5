"""The bounded pool that runs queued jobs through the core (`gateway.call`), like any request:
same limits, same usage record (under the route that queued the job).

`workers` tasks each claim the oldest queued job from the database, run it, and store its end.
At shutdown the pool stops claiming and lets running jobs finish (up to `drain_s`); queued jobs
stay in the database and run after the next start. A job still running when the drain times out,
or orphaned by a process that died, goes back to the queue (its partial call was recorded, so such
a job is billed for both runs)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from datetime import timedelta

import orjson

from ..core import Answer, Gateway, Inference
from ..db.models import Job
from ..domain import Principal
from ..durations import utcnow
from ..errors import as_keystile
from ..settings import JobSettings
from .store import DONE, FAILED, JobStore

log = logging.getLogger("keystile.jobs")

PrincipalOf = Callable[[Job], Awaitable[Principal]]
HOST = socket.gethostname()[:40]


def _dead_here(runner: str) -> bool:
    """Whether `runner` (host:pid:tag, not this runner) was a process on this host that is gone: its
    pid runs nothing, or is this process (a restarted container often has the same pid)."""
    host, _, pid = runner.rpartition(":")[0].rpartition(":")
    if host != HOST or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def answer_text(answer: Answer) -> str:
    """The generated text of an OpenAI chat (or text) completion body."""
    choices = orjson.loads(answer.body).get("choices") or [{}]
    first = choices[0]
    return (first.get("message") or {}).get("content") or first.get("text") or ""


class JobRunner:
    def __init__(self, store: JobStore, gateway: Gateway, principal_of: PrincipalOf, settings: JobSettings, *,
                 orphan_after_s: float, drain_s: float = 20.0):
        self.store = store
        self.gateway = gateway
        self.principal_of = principal_of
        self.settings = settings
        self.orphan_after_s = orphan_after_s
        self.drain_s = drain_s
        self.id = f"{HOST}:{os.getpid()}:{secrets.token_hex(3)}"
        self._wake = asyncio.Event()
        self._closing = False
        self._tasks: list[asyncio.Task] = []
        self._running: dict[str, asyncio.Task] = {}
        self._ended: dict[str, asyncio.Event] = {}
        self._db_down = False

    async def start(self) -> None:
        await self._requeue_orphans()
        self._tasks = [asyncio.create_task(self._work(), name=f"job-worker-{i}") for i in range(self.settings.workers)]
        self._tasks.append(asyncio.create_task(self._sweep(), name="job-sweeper"))

    async def _requeue_orphans(self) -> None:
        """Jobs left running by a process that is gone: on this host, one whose pid no longer runs
        (at once); on another host, any that has run longer than a call may."""
        dead = [r for r in await self.store.runners() if r != self.id and _dead_here(r)]
        n = await self.store.requeue(runners=dead) if dead else 0
        n += await self.store.requeue(started_before=utcnow() - timedelta(seconds=self.orphan_after_s))
        if n:
            log.warning("requeued %d jobs left running by a gateway process that stopped", n)

    def wake(self) -> None:
        """A job was queued: an idle worker looks now instead of at its next poll."""
        self._wake.set()

    def ended(self, job_id: str) -> asyncio.Event:
        """Set when the job ends in this process (for /runsync); forgotten once set."""
        return self._ended.setdefault(job_id, asyncio.Event())

    def cancel(self, job_id: str) -> None:
        task = self._running.get(job_id)
        if task is not None:
            task.cancel()

    async def aclose(self) -> None:
        self._closing = True
        self._wake.set()
        workers, sweeper = self._tasks[:-1], self._tasks[-1:]
        for task in sweeper:
            task.cancel()
        _, late = await asyncio.wait(workers, timeout=self.drain_s) if workers else (set(), set())
        if late:  # calls still running: stop them and put their jobs back in the queue
            stuck, calls = list(self._running), list(self._running.values())
            for call in calls:
                call.cancel()
            await asyncio.gather(*calls, *late, return_exceptions=True)
            await self.store.requeue(runners=[self.id], ids=stuck)
            log.warning("shutdown: %d running jobs did not finish within %.0f s and were requeued",
                        len(stuck), self.drain_s)
        await asyncio.gather(*sweeper, return_exceptions=True)

    async def _work(self) -> None:
        while not self._closing:
            try:
                job = await self.store.claim(self.id)
                self._reachable()
            except Exception as exc:  # the database is away: try again shortly
                self._unreachable(exc)
                job = None
            if job is None:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=1.0)
                continue
            call = asyncio.create_task(self._run(job))
            self._running[job.id] = call
            try:
                await asyncio.shield(call)
            finally:
                self._running.pop(job.id, None)
                event = self._ended.pop(job.id, None)
                if event is not None:
                    event.set()

    async def _run(self, job: Job) -> None:
        try:
            principal = await self.principal_of(job)
            answer = await self.gateway.call(principal, "chat", Inference(dict(job.request), route=job.route))
            assert isinstance(answer, Answer)
            output = {"status": "success", "output": answer_text(answer), "model": job.model}
            if answer.usage is not None:
                output["usage"] = {"prompt_tokens": answer.usage.prompt_tokens,
                                   "completion_tokens": answer.usage.completion_tokens}
            await self._store(lambda: self.store.finish(job.id, DONE, output=output))
        except asyncio.CancelledError:
            if not self._closing:  # POST /cancel stopped it (and marked it CANCELLED)
                await asyncio.shield(self._store(lambda: self.store.cancel(job.id)))
        except Exception as exc:
            error = as_keystile(exc).message[:2000]
            await self._store(lambda: self.store.finish(job.id, FAILED, error=error))

    async def _store(self, write: Callable[[], Awaitable[bool]]) -> None:
        """A job's end written, however long the database is away (else the job would run again);
        at shutdown, given up after a few tries (the job is then requeued as an orphan)."""
        delay = 0.5
        while True:
            try:
                await write()
                self._reachable()
                return
            except Exception as exc:
                self._unreachable(exc)
                if self._closing and delay >= 4:
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _unreachable(self, exc: Exception) -> None:
        """Logged once per outage, without a traceback."""
        if not self._db_down:
            self._db_down = True
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            log.warning("jobs: the database is unreachable (%s: %s); retrying", type(exc).__name__, first)

    def _reachable(self) -> None:
        if self._db_down:
            self._db_down = False
            log.warning("jobs: the database is reachable again")

    async def _sweep(self) -> None:
        every = min(60.0, max(1.0, self.settings.keep_finished_s / 4))
        while True:
            await asyncio.sleep(every)
            try:
                await self.store.expire(self.settings.keep_finished_s)
                await self._requeue_orphans()
                self._reachable()
            except Exception as exc:
                self._unreachable(exc)


