"""The in-process cache of key records (hash -> Principal or refusal), so a request is
authenticated without a database round trip.

- A first sight of a hash loads it (concurrent loads of one hash share one query).
- Entries older than `ttl` are still served while one background reload refreshes them.
- Unknown hashes are cached negatively for `negative_ttl`, in a bounded table.
- `invalidate` drops entries at once and bumps a generation: a load that was in flight when an
  invalidation happened is not written back (it is repeated), so no stale record survives.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from ..db.keys import Refusal
from .principal import Principal

Loaded = Principal | Refusal | None
Kind = Literal["key", "user", "team", "all"]


@dataclass(slots=True)
class _Entry:
    value: Loaded
    loaded_at: float


class KeyCache:
    def __init__(self, load: Callable[[str], Awaitable[Loaded]], *, ttl: float, negative_ttl: float = 5.0,
                 max_negative: int = 100_000, clock: Callable[[], float] = time.monotonic):
        self._load = load
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._max_negative = max_negative
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._negative: OrderedDict[str, float] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[Loaded]] = {}
        self._refreshing: set[asyncio.Task] = set()
        self.generation = 0

    async def get(self, token_hash: str) -> Loaded:
        entry = self._entries.get(token_hash)
        now = self._clock()
        if entry is not None:
            if now - entry.loaded_at > self._ttl and token_hash not in self._inflight:
                task = asyncio.create_task(self._fetch(token_hash, self._claim(token_hash)))
                self._refreshing.add(task)
                task.add_done_callback(self._refreshing.discard)
            return entry.value
        seen = self._negative.get(token_hash)
        if seen is not None and now - seen < self._negative_ttl:
            return None
        pending = self._inflight.get(token_hash)
        if pending is not None:
            return await asyncio.shield(pending)
        return await self._fetch(token_hash, self._claim(token_hash))

    def _claim(self, token_hash: str) -> asyncio.Future[Loaded]:
        """Mark a load of `token_hash` as in flight, before anything awaits: every later get in
        the same event-loop turn joins it instead of starting its own."""
        future: asyncio.Future[Loaded] = asyncio.get_running_loop().create_future()
        self._inflight[token_hash] = future
        return future

    async def _fetch(self, token_hash: str, future: asyncio.Future[Loaded]) -> Loaded:
        try:
            for _ in range(5):
                generation = self.generation
                value = await self._load(token_hash)
                if generation == self.generation:
                    break
            self._store(token_hash, value)
            future.set_result(value)
            return value
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            if self._inflight.get(token_hash) is future:
                del self._inflight[token_hash]

    def _store(self, token_hash: str, value: Loaded) -> None:
        now = self._clock()
        if value is None:
            self._entries.pop(token_hash, None)
            self._negative[token_hash] = now
            self._negative.move_to_end(token_hash)
            while len(self._negative) > self._max_negative:
                self._negative.popitem(last=False)
        else:
            self._negative.pop(token_hash, None)
            self._entries[token_hash] = _Entry(value, now)

    def invalidate(self, kind: Kind, ident: str | None = None) -> None:
        self.generation += 1
        if kind == "all":
            self._entries.clear()
            self._negative.clear()
        elif kind == "key":
            self._entries.pop(ident, None)
            self._negative.pop(ident, None)
            # A rotated key is cached under its previous hash too.
            for h in [h for h, e in self._entries.items() if isinstance(e.value, Principal)
                      and e.value.key_hash == ident]:
                del self._entries[h]
        else:
            attr = "user_id" if kind == "user" else "team_id"
            for h in [h for h, e in self._entries.items()
                      if not isinstance(e.value, Principal) or getattr(e.value, attr) == ident]:
                del self._entries[h]

    def __len__(self) -> int:
        return len(self._entries)

    async def aclose(self) -> None:
        for task in list(self._refreshing):
            task.cancel()
        await asyncio.gather(*self._refreshing, return_exceptions=True)
