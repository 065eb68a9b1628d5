"""The change feed: every gateway process learns of key, user, team (with its members) and
organization changes within a second, with or without Redis, from one cheap indexed query every
half second (not one reload per cached key: with 300 active keys that was 529 database
transactions a second).

Database triggers append a row to `auth_changes` for every insert, delete and relevant update of
keys, users, teams, team members and organizations (migrations/versions/0003, 0009). Each process reads the rows after the last id
it has applied and drops the cache entries they touch; created keys' hashes join the cache's
`may_exist` set, deleted ones leave it.

Ids come from a sequence, and on Postgres a transaction that took a lower id can commit after one
with a higher id was read. So ids below the highest one read that have not been seen yet are
watched for `gap_polls` more polls (a rolled-back transaction leaves a gap for good) before the
feed moves past them. After an outage of the feed, everything cached is dropped once, since
changes may have been pruned meanwhile. Rows older than `keep` are pruned now and then.

Rows with op `spend` (an admin set a spend, written by the update itself: spend.py) drop the
entries too, and are handed to `on_spend`, which sets the limiter's counters.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta

from ..db.engine import Database
from ..db.keys import changes_after, key_hashes, last_change, prune_changes
from ..durations import utcnow
from ..outage import Outage, poll_every
from .cache import KeyCache

SPEND = "spend"
"""The op of a feed row that an admin's spend set adds (not a trigger): see spend.py."""

log = logging.getLogger("keystile")
BULK = 200  # more user/team changes than this in one poll: drop everything (cheaper than scanning for each)


SpendSets = Callable[[Sequence[tuple[int, str, str, float | None]]], Awaitable[None]]
"""Receives spend sets read from the feed: (id, kind, ident, the spend set) each."""


class ChangeFeed:
    def __init__(self, db: Database, cache: KeyCache, *, interval: float = 0.5, gap_polls: int = 120,
                 keep: timedelta = timedelta(days=1), prune_every: float = 3600.0, on_spend: SpendSets | None = None):
        self._db, self._cache, self._on_spend = db, cache, on_spend
        self.interval, self._gap_polls, self._keep, self._prune_every = interval, gap_polls, keep, prune_every
        self._horizon: int | None = None  # every id up to here is applied or given up on
        self._seen: set[int] = set()  # applied ids above the horizon
        self._missing: dict[int, int] = {}  # unseen id below the highest seen -> polls left to wait for it
        self._outage = Outage(log, "key change feed", "read changes",
                              "cached keys stay as they are until the database is back")
        self._pruned_at = float("-inf")
        self._task: asyncio.Task[None] | None = None
        self.applied = 0  # changes applied so far (for tests and metrics)

    async def start(self) -> None:
        """Read the feed's position and the existing keys' hashes (in the background if the database
        is unreachable now), then poll every `interval` seconds."""
        try:
            await self._begin()
        except Exception as exc:  # noqa: BLE001 - started later by the poll loop
            self._outage.failed(exc)
        # A failed poll keeps the horizon: the next one reads every change committed meanwhile, spend
        # sets included (resynchronising from the newest id would skip them; a reset budget would stay spent).
        self._task = asyncio.create_task(poll_every(self.interval, self._step, self._outage),
                                         name="keystile-change-feed")

    async def _begin(self) -> None:
        async with self._db.sessions() as session:
            horizon = await last_change(session)
            hashes = await key_hashes(session)
        self._cache.exists(hashes)
        self._horizon, self._seen, self._missing = horizon, set(), {}

    async def _step(self) -> None:
        if self._horizon is None:
            await self._begin()
            self._cache.invalidate("all")  # whatever was cached meanwhile was not watched
        else:
            await self.poll()
        await self._prune()

    async def poll(self) -> int:
        """Apply the changes committed since the last poll; returns how many."""
        assert self._horizon is not None
        applied = 0
        while True:
            async with self._db.sessions() as session:
                rows = await changes_after(session, after=self._horizon)
            fresh = [r for r in rows if r[0] not in self._seen]
            self._apply(fresh)
            spent = [(r[0], r[1], r[3], r[4]) for r in fresh if r[2] == SPEND]
            if spent and self._on_spend is not None:
                await self._on_spend(spent)
            applied += len(fresh)
            self._seen.update(r[0] for r in fresh)
            if len(rows) < 10_000:
                break
        self._advance()
        self.applied += applied
        return applied

    def _apply(self, rows: list[tuple[int, str, str, str, float | None]]) -> None:
        if sum(1 for r in rows if r[1] != "key") > BULK:
            self._cache.invalidate("all")
        for _, kind, op, ident, _ in rows:
            if kind == "key":
                if op == "delete":
                    self._cache.gone(ident)
                elif op != SPEND:
                    self._cache.exists((ident,))
                self._cache.invalidate("key", ident)
            elif kind in ("user", "team", "org"):
                self._cache.invalidate(kind, ident)  # type: ignore[arg-type]

    def _advance(self) -> None:
        assert self._horizon is not None
        top = max(self._seen, default=self._horizon)
        for missing in range(self._horizon + 1, top):
            if missing not in self._seen:
                self._missing.setdefault(missing, self._gap_polls)
        for missing in list(self._missing):
            self._missing[missing] -= 1
        while self._horizon < top:
            nxt = self._horizon + 1
            if nxt not in self._seen and self._missing.get(nxt, 0) > 0:
                break
            self._seen.discard(nxt)
            self._missing.pop(nxt, None)
            self._horizon = nxt

    async def _prune(self) -> None:
        now = time.monotonic()
        if now - self._pruned_at < self._prune_every:
            return
        self._pruned_at = now
        async with self._db.sessions() as session, session.begin():
            await prune_changes(session, before=utcnow() - self._keep)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
