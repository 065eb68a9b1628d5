"""Budget windows in the database: when a key's, user's, team's or organization's `budget_reset_at` has passed,
its `spend` goes back to 0 and the next reset is set (same phase, whole durations later).

The limiter rolls its own counters at the same instants (limits/specs.py); this keeps what
/key/info, /user/info and /team/info show in step. Every gateway instance may run it: the
WHERE clause makes a second run in the same window a no-op."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ..db.engine import Database
from ..db.models import Key, Organization, Team, User
from ..durations import parse_duration, utcnow
from ..limits import next_reset

log = logging.getLogger("keystile")
CHECK_INTERVAL_S = 10.0


async def reset_due_budgets(session: AsyncSession, *, now: datetime) -> list[tuple[str, str]]:
    """Reset every budget whose window has ended; returns (kind, id) of what changed."""
    changed: list[tuple[str, str]] = []
    for kind, model, ident in (("key", Key, "token_hash"), ("user", User, "user_id"), ("team", Team, "team_id"),
                               ("org", Organization, "organization_id")):
        rows = (await session.execute(select(model).where(model.budget_duration.is_not(None),
                                                          model.budget_reset_at <= now))).scalars().all()
        for row in rows:
            stored = row.budget_reset_at if row.budget_reset_at.tzinfo else row.budget_reset_at.replace(
                tzinfo=timezone.utc)
            reset = next_reset(parse_duration(row.budget_duration), now.timestamp(), anchor=stored.timestamp())
            row.spend, row.budget_reset_at = 0.0, datetime.fromtimestamp(reset, timezone.utc)
            changed.append((kind, getattr(row, ident)))
    await session.commit()
    return changed


class BudgetResetter:
    """A background task resetting due budgets and telling the key caches what changed."""

    def __init__(self, db: Database, invalidate: Callable[[str, str], Awaitable[None]],
                 interval: float = CHECK_INTERVAL_S):
        self._db, self._invalidate, self._interval = db, invalidate, interval
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def run_once(self) -> list[tuple[str, str]]:
        async with self._db.sessions() as session:
            changed = await reset_due_budgets(session, now=utcnow())
        for kind, ident in changed:
            await self._invalidate(kind, ident)
        return changed

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception as exc:  # the database may be away; try again next round
                log.warning("budget reset check failed: %s", exc)
            await asyncio.sleep(self._interval)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
