"""An admin setting a key's or user's spend (/key/update, /user/update with `spend`, e.g. 0 to reset
it, or more to use the budget up) takes effect at once, in every process. (The routes of teams share
the users' code, so a team's spend would be handled alike.)

The limiter keeps a budget window's spend as its own counter, seeded from the database once, so a
new value in the database alone would wait for the next window. Instead:

1. the update's transaction adds a `spend` row to the change feed (`note`), naming the row;
2. after the commit, the updating process sets its limiter's counter for the scope's current
   window to the new value (`SpendSync.applied`); with Redis limits that is the shared counter, so
   every instance sees it at once;
3. every process reads the row from the change feed within a second, loads the key, user or team
   for its budget and window, and sets its counter to the value the row carries (`SpendSync.changed`):
   this reaches the in-process counters of instances without Redis (and the fallback counters of
   those with it). The row's value, not the stored spend: usage of requests made before the set but
   written after it would otherwise come back into the counter and undo a reset.

The feed row's id goes with every set, and a limiter applies each id once and never after a later
one (limits/base.py), so the three paths do not undo spend counted in between.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from ..db.engine import Database
from ..db.keys import get_key
from ..db.models import AuthChange, Key, Team, User
from ..limits import Limiter, budget_spec
from .changes import SPEND
from .records import row_scope

log = logging.getLogger("keystile")
_MODELS: dict[str, type[User] | type[Team]] = {"user": User, "team": Team}


def note(session: AsyncSession, kind: str, ident: str, value: float) -> AuthChange:
    """In the transaction that sets the spend to `value`: the change-feed row telling every process.
    Its `id` is there after the commit."""
    change = AuthChange(kind=kind, op=SPEND, ident=ident, value=value)
    session.add(change)
    return change


class SpendSync:
    def __init__(self, db: Database, limiter: Limiter):
        self._db, self._limiter = db, limiter

    async def applied(self, change: AuthChange, row: Key | User | Team) -> None:
        """The updating process, right after the commit, with the row as it was stored."""
        await self._set(change.id, f"{change.kind}:{change.ident}", row, change.value)

    async def changed(self, changes: Sequence[tuple[int, str, str, float | None]]) -> None:
        """Spend sets read from the change feed: (id, kind, ident, value) each, in order."""
        for change_id, kind, ident, value in changes:
            async with self._db.sessions() as session:
                if kind == "key":
                    row = await get_key(session, token_hash=ident)
                elif kind in _MODELS:
                    row = await session.get(_MODELS[kind], ident)
                else:
                    log.warning("change feed: spend set of an unknown kind %r ignored", kind)
                    continue
            if row is not None:  # deleted since: nothing left to limit
                await self._set(change_id, f"{kind}:{ident}", row, value)

    async def _set(self, change_id: int, scope: str, row: Key | User | Team, value: float | None) -> None:
        """`value` None: a row written before the feed carried values (the stored spend stands in)."""
        found = row_scope(scope, row)
        budget = budget_spec(found if value is None else replace(found, spend=value), time.time())
        if budget is not None:  # no max_budget: no counter
            await self._limiter.set_spend(change_id, budget)
