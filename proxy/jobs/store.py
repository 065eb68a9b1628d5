"""The jobs table's queries. Every change of state is one guarded UPDATE (`WHERE status = ...`),
so of two processes (or a cancel racing a finish) exactly one wins and a job ends once.

A running job is leased to its runner: `heartbeat_at` is renewed every second while it runs, a
job whose heartbeat is older than the lease goes back to the queue, and a runner ends a job only
while it still holds it (`runner = me`), so a runner that lost its lease (cut off from the
database) cannot overwrite the end of the run that took over."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, func, or_, select, update

from ..db.engine import Database
from ..db.models import Job
from ..durations import utcnow

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "IN_QUEUE", "IN_PROGRESS", "COMPLETED", "FAILED", "CANCELLED"
ENDED = (DONE, FAILED, CANCELLED)


class JobStore:
    def __init__(self, db: Database):
        self.db = db

    async def add(self, job: Job) -> None:
        async with self.db.sessions() as session:
            session.add(job)
            await session.commit()

    async def get(self, job_id: str) -> Job | None:
        async with self.db.sessions() as session:
            return await session.get(Job, job_id)

    async def queued(self, owner: str) -> int:
        async with self.db.sessions() as session:
            return await session.scalar(select(func.count()).select_from(Job).where(
                Job.owner == owner, Job.status == QUEUED)) or 0

    async def claim(self, runner: str) -> Job | None:
        """The oldest queued job, now IN_PROGRESS on `runner`; None when there is none to take."""
        async with self.db.sessions() as session:
            for _ in range(5):  # another runner may take the one we saw first
                job_id = await session.scalar(select(Job.id).where(Job.status == QUEUED)
                                              .order_by(Job.created_at).limit(1))
                if job_id is None:
                    return None
                taken = await session.execute(update(Job).where(Job.id == job_id, Job.status == QUEUED)
                                              .values(status=RUNNING, runner=runner, started_at=utcnow(),
                                                      heartbeat_at=utcnow()))
                await session.commit()
                if taken.rowcount == 1:
                    return await session.get(Job, job_id, populate_existing=True)
        return None

    async def finish(self, job_id: str, runner: str, status: str, *, output: dict | None = None,
                     error: str | None = None) -> bool:
        """A running job's end, written by the runner holding it; False if it had ended already
        (cancelled meanwhile) or was taken over by another runner."""
        async with self.db.sessions() as session:
            result = await session.execute(
                update(Job).where(Job.id == job_id, Job.status == RUNNING, Job.runner == runner)
                .values(status=status, output=output, error=error, finished_at=utcnow()))
            await session.commit()
            return result.rowcount == 1

    async def beat(self, runner: str, held: list[str]) -> list[str]:
        """Renew the lease of the jobs `runner` runs; the ones of `held` it no longer holds
        (cancelled through another gateway, or requeued after its lease lapsed)."""
        async with self.db.sessions() as session:
            await session.execute(update(Job).where(Job.runner == runner, Job.status == RUNNING)
                                  .values(heartbeat_at=utcnow()))
            still = set(await session.scalars(select(Job.id).where(
                Job.id.in_(held), Job.status == RUNNING, Job.runner == runner)))
            await session.commit()
        return [job_id for job_id in held if job_id not in still]

    async def cancel(self, job_id: str) -> bool:
        return await self._move(job_id, (QUEUED, RUNNING), status=CANCELLED, finished_at=utcnow())

    async def runners(self) -> list[str]:
        """The runners that hold running jobs."""
        async with self.db.sessions() as session:
            return [r for r in (await session.scalars(select(Job.runner).where(Job.status == RUNNING).distinct()))
                    if r is not None]

    async def requeue(self, *, runners: list[str] | None = None, silent_since: datetime | None = None,
                      ids: list[str] | None = None) -> int:
        """Running jobs back in the queue: those of the runners named (one shutting down, or ones
        that died), those whose lease lapsed (no heartbeat since `silent_since`: their runner died
        or lost the database), or the ones named."""
        query = update(Job).where(Job.status == RUNNING)
        if runners is not None:
            query = query.where(Job.runner.in_(runners))
        if silent_since is not None:
            query = query.where(or_(Job.heartbeat_at < silent_since,
                                    Job.heartbeat_at.is_(None) & (Job.started_at < silent_since)))
        if ids is not None:
            query = query.where(Job.id.in_(ids))
        async with self.db.sessions() as session:
            result = await session.execute(query.values(status=QUEUED, runner=None, started_at=None,
                                                                     heartbeat_at=None))
            await session.commit()
            return result.rowcount

    async def expire(self, keep_s: float) -> int:
        """Forget jobs that ended more than `keep_s` seconds ago."""
        async with self.db.sessions() as session:
            result = await session.execute(delete(Job).where(Job.status.in_(ENDED),
                                                             Job.finished_at < utcnow() - timedelta(seconds=keep_s)))
            await session.commit()
            return result.rowcount

    async def _move(self, job_id: str, sources: tuple[str, ...], **values) -> bool:
        async with self.db.sessions() as session:
            result = await session.execute(update(Job).where(Job.id == job_id, Job.status.in_(sources)).values(**values))
            await session.commit()
            return result.rowcount == 1
