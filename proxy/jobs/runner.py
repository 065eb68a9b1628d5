"""The bounded pool that runs queued jobs through the core (`gateway.call`), like any request:
same limits, same usage record (under the route that queued the job).

`workers` tasks each claim the oldest queued job from the database, run it, and store its end.
While jobs run, a heartbeat renews their lease every second (store.py) and finds the ones this
process no longer holds: cancelled through another gateway, or taken over after the lease lapsed;
their generation is stopped (a stream closed early is billed for the tokens it produced).

At shutdown the pool stops claiming and lets running jobs finish (up to `drain_s`); queued jobs
stay in the database and run after the next start. A job still running when the drain times out
goes back to the queue; so does one whose runner died (at once when it was a process of this host,
else when its lease lapses) — execution is at least once. Billing is exactly once: every run of a
job records its usage under the same request id (`job-<id>`), and the usage writer stores a request
id once, so the first run that settles is the one billed (a run cut at shutdown is billed for what
it generated and its re-run is not; a run lost in a crash recorded nothing, and its re-run is)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from datetime import timedelta

from ..core import Gateway, Inference, Stream
from ..core.estimates import streamed_text
from ..db.models import Job
from ..domain import Principal
from ..durations import utcnow
from ..errors import as_keystile
from ..outage import Outage
from ..settings import JobSettings
from .store import DONE, FAILED, JobStore

log = logging.getLogger("keystile.jobs")

BEAT_S = 1.0  # a running job's lease is renewed, and a cancel through another gateway noticed, this often
LEASE_S = 15.0  # a running job whose heartbeat is older than this is queued again

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


def usage_id(job_id: str) -> str:
    """The request id every run of a job records its usage under (so it is billed once)."""
    return f"job-{job_id}"


class JobRunner:
    def __init__(self, store: JobStore, gateway: Gateway, principal_of: PrincipalOf, settings: JobSettings, *,
                 drain_s: float = 20.0, lease_s: float = LEASE_S):
        self.store = store
        self.gateway = gateway
        self.principal_of = principal_of
        self.settings = settings
        self.drain_s = drain_s
        self.lease_s = lease_s
        self.id = f"{HOST}:{os.getpid()}:{secrets.token_hex(3)}"
        self._wake = asyncio.Event()
        self._closing = False
        self._tasks: list[asyncio.Task] = []
        self._running: dict[str, asyncio.Task] = {}
        self._ended: dict[str, asyncio.Event] = {}
        self.outage = Outage(log, "jobs")

    async def start(self) -> None:
        await self._requeue_orphans()
        self._tasks = [asyncio.create_task(self._work(), name=f"job-worker-{i}") for i in range(self.settings.workers)]
        self._tasks.append(asyncio.create_task(self._beat(), name="job-heartbeat"))
        self._tasks.append(asyncio.create_task(self._sweep(), name="job-sweeper"))

    async def _requeue_orphans(self) -> None:
        """Jobs left running by a process that is gone: on this host, one whose pid no longer runs
        (at once); on any host, one whose lease lapsed."""
        dead = [r for r in await self.store.runners() if r != self.id and _dead_here(r)]
        n = await self.store.requeue(runners=dead) if dead else 0
        n += await self.store.requeue(silent_since=utcnow() - timedelta(seconds=self.lease_s))
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
        workers, background = self._tasks[:-2], self._tasks[-2:]
        background[-1].cancel()  # the sweeper; the heartbeat keeps the running jobs' lease while they drain
        _, late = await asyncio.wait(workers, timeout=self.drain_s) if workers else (set(), set())
        if late:  # calls still running: stop them and put their jobs back in the queue
            stuck, calls = list(self._running), list(self._running.values())
            for call in calls:
                call.cancel()
            await asyncio.gather(*calls, *late, return_exceptions=True)
            await self.store.requeue(runners=[self.id], ids=stuck)
            log.warning("shutdown: %d running jobs did not finish within %.0f s and were requeued",
                        len(stuck), self.drain_s)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)

    async def _work(self) -> None:
        while not self._closing:
            try:
                job = await self.store.claim(self.id)
                self.outage.ended()
            except Exception as exc:  # the database is away: try again shortly
                self.outage.failed(exc)
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
        """One run, streamed through the core so that a run stopped early (cancelled, drained) is
        settled with the tokens it produced."""
        try:
            principal = await self.principal_of(job)
            stream = await self.gateway.call(principal, "chat", Inference(
                dict(job.request), stream=True, route=job.route, request_id=usage_id(job.id)))
            assert isinstance(stream, Stream)
            relayed: list[bytes] = []
            usage = None
            try:
                async for chunk in stream:
                    usage = chunk.usage or usage
                    if not chunk.usage_only:
                        relayed.append(chunk.data)
            finally:
                await stream.aclose()
            output = {"status": "success", "output": streamed_text(relayed), "model": job.model}
            if usage is not None:
                output["usage"] = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens}
            await self._store(lambda: self.store.finish(job.id, self.id, DONE, output=output))
        except asyncio.CancelledError:
            pass  # shutdown (the job is requeued), or the job is no longer ours (cancelled, taken over)
        except Exception as exc:
            error = as_keystile(exc).message[:2000]
            await self._store(lambda: self.store.finish(job.id, self.id, FAILED, error=error))

    async def _beat(self) -> None:
        """Every BEAT_S: renew the running jobs' lease and stop the ones no longer ours; every
        third of a lease, requeue the jobs of runners that are gone."""
        loop = asyncio.get_running_loop()
        next_orphans = loop.time() + self.lease_s / 3
        while True:
            await asyncio.sleep(BEAT_S)
            try:
                held = list(self._running)
                for job_id in await self.store.beat(self.id, held) if held else ():
                    log.info("job %s was cancelled or taken over elsewhere: stopping it here", job_id)
                    self.cancel(job_id)
                if loop.time() >= next_orphans and not self._closing:
                    next_orphans = loop.time() + self.lease_s / 3
                    await self._requeue_orphans()
                self.outage.ended()
            except Exception as exc:
                self.outage.failed(exc)

    async def _store(self, write: Callable[[], Awaitable[bool]]) -> None:
        """A job's end written, however long the database is away (else the job would run again);
        at shutdown, given up after a few tries (the job is then requeued as an orphan)."""
        await self.outage.persist(write, max_delay=5.0, give_up=lambda delay: self._closing and delay >= 4)

    async def _sweep(self) -> None:
        every = min(60.0, max(1.0, self.settings.keep_finished_s / 4))
        while True:
            await asyncio.sleep(every)
            try:
                await self.store.expire(self.settings.keep_finished_s)
                self.outage.ended()
            except Exception as exc:
                self.outage.failed(exc)


