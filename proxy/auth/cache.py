"""The in-process cache of key records (hash -> Principal or refusal), so a request is
authenticated without a database round trip. JWT callers' user and team records are cached here too.

- A first sight of a hash loads it (concurrent loads of one hash share one query).
- Changes are not discovered by reloading: the change feed (changes.py) and Redis invalidation
  drop the entries a change touches, within a second in every process. Entries are reloaded only
  to pick up the spend the database has accrued (the seed of budget counters): in the background
  once older than `ttl / 2` (no request waits), and before use once older than `ttl` (a key idle
  that long). A revoked key never depends on either. At most `max_refreshing` background reloads
  run at a time: thousands of keys loaded together at start come due together, and one task and
  database session each at once took 70+ MiB and starved the usage writer (bench/soak.py, 10,000
  keys); a key passed over is refreshed by one of its later requests.
- Unknown hashes are cached negatively for `negative_ttl`, in a bounded table.
- `invalidate` drops entries at once and bumps a generation: a load that was in flight when an
  invalidation happened is not written back (it is repeated), so no stale record survives.
- `may_exist` answers, without the database, whether a hash may belong to a key: the hashes of
  every key in the database (loaded at start, kept current by the change feed). The failure
  throttle lets such keys through from a throttled address.
- Database unreachable: loads fail fast with 503 for a backoff period (growing to `max_backoff`)
  instead of querying on every request; the outage is logged once, the recovery once. Entries
  already cached keep working.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from ..domain import Principal, Refusal
from ..errors import Unavailable

log = logging.getLogger("keystile")

Loaded = Principal | Refusal | None
Subject = Literal["key", "user", "team", "org", "all"]
"""What an invalidation is about: one key, every key of a user, team or organization, or everything."""


@dataclass(slots=True)
class _Entry:
    value: Loaded
    loaded_at: float


def _short(token_hash: str) -> int:
    """64 bits of a hash: enough to tell keys apart (a collision only costs a database lookup)."""
    try:
        return int(token_hash[:16], 16)
    except ValueError:
        return -1


def jwt_ident(claims: Principal) -> str:
    """The cache key of a JWT caller: everything of the claims that the merged principal depends on."""
    models = ",".join(sorted(claims.models)) if claims.models is not None else "*"
    return f"jwt\x00{claims.user_id}\x00{claims.team_id or ''}\x00{models}\x00{int(claims.is_master)}"


class KeyCache:
    def __init__(self, load: Callable[[str], Awaitable[Loaded]], *, ttl: float, negative_ttl: float = 5.0,
                 max_negative: int = 100_000, clock: Callable[[], float] = time.monotonic,
                 load_jwt: Callable[[Principal], Awaitable[Loaded]] | None = None,
                 backoff: float = 0.5, max_backoff: float = 10.0, max_refreshing: int = 8):
        self._load = load
        self._load_jwt = load_jwt
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._max_negative = max_negative
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._negative: OrderedDict[str, float] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[Loaded]] = {}
        self._refreshing: set[asyncio.Task] = set()
        self._max_refreshing = max_refreshing
        self._hashes: set[int] = set()
        self._backoff, self._max_backoff = backoff, max_backoff
        self._down_until: float | None = None  # set while the database is unreachable
        self._delay = backoff
        self.generation = 0

    async def get(self, token_hash: str) -> Loaded:
        return await self._get(token_hash, None)

    async def get_jwt(self, claims: Principal) -> Principal | Refusal:
        """The JWT caller merged with its user's and team's records (the claims alone without a loader)."""
        if self._load_jwt is None:
            return claims
        found = await self._get(jwt_ident(claims), claims)
        return claims if found is None else found

    async def _get(self, ident: str, claims: Principal | None) -> Loaded:
        entry = self._entries.get(ident)
        now = self._clock()
        if entry is not None:
            age = now - entry.loaded_at
            if age <= self._ttl or self._down(now):  # the database away: serve what we know
                if (age > self._ttl / 2 and ident not in self._inflight and not self._down(now)
                        and len(self._refreshing) < self._max_refreshing):
                    task = asyncio.create_task(self._refresh(ident, claims, self._claim(ident)))
                    self._refreshing.add(task)
                    task.add_done_callback(self._refreshing.discard)
                return entry.value
            # Unused for longer than ttl: its spend may be far behind, so it is loaded again first.
        else:
            seen = self._negative.get(ident)
            if seen is not None and now - seen < self._negative_ttl:
                return None
        try:
            pending = self._inflight.get(ident)
            if pending is not None:
                return await asyncio.shield(pending)
            if self._down(now):
                raise self._unavailable(now)
            return await self._fetch(ident, claims, self._claim(ident))
        except Unavailable:
            if entry is not None:
                return entry.value
            raise

    def _down(self, now: float) -> bool:
        return self._down_until is not None and now < self._down_until

    def _unavailable(self, now: float) -> Unavailable:
        wait = max(1, int((self._down_until or now) - now + 0.999))
        return Unavailable("the key store (database) is unreachable; retry shortly", code="key_store_unavailable",
                           headers={"Retry-After": str(wait)})

    def _claim(self, ident: str) -> asyncio.Future[Loaded]:
        """Mark a load of `ident` as in flight, before anything awaits: every later get in the same
        event-loop turn joins it instead of starting its own."""
        future: asyncio.Future[Loaded] = asyncio.get_running_loop().create_future()
        self._inflight[ident] = future
        return future

    async def _refresh(self, ident: str, claims: Principal | None, future: asyncio.Future[Loaded]) -> None:
        try:
            await self._fetch(ident, claims, future)
        except Unavailable:
            pass  # logged once by _failed; the entry keeps serving

    async def _fetch(self, ident: str, claims: Principal | None, future: asyncio.Future[Loaded]) -> Loaded:
        try:
            for _ in range(5):
                generation = self.generation
                try:
                    value = await (self._load(ident) if claims is None else self._load_jwt(claims))  # type: ignore[misc]
                except Exception as exc:  # noqa: BLE001 - any driver error: the database is unreachable
                    raise self._failed(exc) from None
                if generation == self.generation:
                    break
            self._recovered()
            self._store(ident, value)
            future.set_result(value)
            return value
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            if self._inflight.get(ident) is future:
                del self._inflight[ident]

    def _failed(self, exc: Exception) -> Unavailable:
        now = self._clock()
        if self._down_until is None:
            log.error("key store unreachable (%s: %s); unknown keys get 503 and loads are retried with backoff "
                      "until it is back", type(exc).__name__, str(exc).split("\n", 1)[0])
            self._delay = self._backoff
        else:
            self._delay = min(self._delay * 2, self._max_backoff)
        self._down_until = now + self._delay
        return self._unavailable(now)

    def _recovered(self) -> None:
        if self._down_until is not None:
            self._down_until = None
            log.warning("key store reachable again")

    def _store(self, ident: str, value: Loaded) -> None:
        now = self._clock()
        if value is None:
            self._entries.pop(ident, None)
            self._hashes.discard(_short(ident))
            self._negative[ident] = now
            self._negative.move_to_end(ident)
            while len(self._negative) > self._max_negative:
                self._negative.popitem(last=False)
        else:
            if isinstance(value, Principal) and value.key_hash is not None:
                self._hashes.add(_short(ident))
            self._negative.pop(ident, None)
            self._entries[ident] = _Entry(value, now)

    def may_exist(self, token_hash: str) -> bool:
        return _short(token_hash) in self._hashes

    def exists(self, hashes: Iterable[str]) -> None:
        """Hashes of keys that exist (from the database at start, or created since)."""
        self._hashes.update(_short(h) for h in hashes)

    def gone(self, token_hash: str) -> None:
        self._hashes.discard(_short(token_hash))

    def invalidate(self, kind: Subject, ident: str | None = None) -> None:
        self.generation += 1
        if kind == "all":
            self._entries.clear()
            self._negative.clear()
        elif kind == "key":
            self._entries.pop(ident, None)  # type: ignore[arg-type]
            self._negative.pop(ident, None)  # type: ignore[arg-type]
            # A rotated key is cached under its previous hash too.
            for h in [h for h, e in self._entries.items() if isinstance(e.value, Principal)
                      and e.value.key_hash == ident]:
                del self._entries[h]
        else:
            attr = {"user": "user_id", "team": "team_id", "org": "organization_id"}[kind]
            for h in [h for h, e in self._entries.items()
                      if not isinstance(e.value, Principal) or getattr(e.value, attr) == ident]:
                del self._entries[h]

    def __len__(self) -> int:
        return len(self._entries)

    async def aclose(self) -> None:
        for task in list(self._refreshing):
            task.cancel()
        await asyncio.gather(*self._refreshing, return_exceptions=True)
