"""The in-process key cache: single-flight loads, negative caching, background refresh, and no
stale record written back by a load that was in flight when an invalidation happened."""

from __future__ import annotations

import asyncio

from proxy.auth.cache import KeyCache
from proxy.domain import Principal


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Store:
    """A loader over a dict, counting calls; `gate` holds loads until released."""

    def __init__(self) -> None:
        self.rows: dict[str, Principal] = {}
        self.calls = 0
        self.gate: asyncio.Event | None = None

    async def load(self, token_hash: str):
        self.calls += 1
        snapshot = self.rows.get(token_hash)
        if self.gate is not None:
            await self.gate.wait()
        return snapshot


async def test_concurrent_first_sight_makes_one_query():
    store = Store()
    store.rows["h"] = Principal(key_hash="h", key_alias="a")
    cache = KeyCache(store.load, ttl=30, clock=Clock())
    results = await asyncio.gather(*(cache.get("h") for _ in range(50)))
    assert store.calls == 1 and all(r.key_alias == "a" for r in results)


async def test_unknown_keys_are_cached_negatively_then_looked_up_again():
    store, clock = Store(), Clock()
    cache = KeyCache(store.load, ttl=30, negative_ttl=5, clock=clock)
    for _ in range(100):
        assert await cache.get("nope") is None
    assert store.calls == 1
    clock.now = 6
    assert await cache.get("nope") is None and store.calls == 2


async def test_negative_entries_are_bounded():
    store = Store()
    cache = KeyCache(store.load, ttl=30, negative_ttl=60, max_negative=10, clock=Clock())
    for i in range(50):
        await cache.get(f"bad-{i}")
    await cache.get("bad-0")  # evicted long ago: looked up again
    assert store.calls == 51


async def stale_entry() -> tuple[Store, KeyCache]:
    """A cache holding key "h" as "old" past its TTL, while the store has it as "new"."""
    store, clock = Store(), Clock()
    store.rows["h"] = Principal(key_hash="h", key_alias="old")
    cache = KeyCache(store.load, ttl=1, clock=clock)
    await cache.get("h")
    store.rows["h"] = Principal(key_hash="h", key_alias="new")
    clock.now = 0.75  # past half its TTL
    return store, cache


async def test_entries_unused_for_longer_than_their_ttl_are_loaded_before_use():
    """Their spend (budget seeds) may be far behind; revocation never depends on this."""
    store, cache = await stale_entry()
    cache._clock.now = 1.5
    assert (await cache.get("h")).key_alias == "new" and store.calls == 2


async def test_stale_entries_are_served_while_one_refresh_runs():
    store, cache = await stale_entry()
    assert (await cache.get("h")).key_alias == "old"  # no wait on the database
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert (await cache.get("h")).key_alias == "new" and store.calls == 2


async def test_a_burst_on_a_stale_entry_starts_one_refresh():
    """Many requests in the same event-loop turn find the entry stale: one reload, not one each
    (each would be a database query, and their bookkeeping used to collide)."""
    store, cache = await stale_entry()
    results = await asyncio.gather(*(cache.get("h") for _ in range(32)))
    assert {r.key_alias for r in results} == {"old"}
    await asyncio.gather(*cache._refreshing)
    assert store.calls == 2 and (await cache.get("h")).key_alias == "new"


async def test_a_load_in_flight_during_an_invalidation_is_not_written_back():
    store = Store()
    store.rows["h"] = Principal(key_hash="h", key_alias="before")
    store.gate = asyncio.Event()
    cache = KeyCache(store.load, ttl=30, clock=Clock())
    pending = asyncio.create_task(cache.get("h"))
    await asyncio.sleep(0)  # the load has read the old row and waits
    store.rows["h"] = Principal(key_hash="h", key_alias="after")  # e.g. blocked by an admin
    cache.invalidate("key", "h")
    store.gate.set()
    assert (await pending).key_alias == "after"  # the stale read was repeated, not returned or stored
    store.gate = None
    assert (await cache.get("h")).key_alias == "after" and store.calls == 2


async def test_user_and_team_invalidation_drop_their_keys_only():
    store = Store()
    store.rows = {"a": Principal(key_hash="a", user_id="u1", team_id="t1"),
                  "b": Principal(key_hash="b", user_id="u2", team_id="t2")}
    cache = KeyCache(store.load, ttl=30, clock=Clock())
    await cache.get("a"), await cache.get("b")
    cache.invalidate("user", "u1")
    assert len(cache) == 1
    cache.invalidate("team", "t2")
    assert len(cache) == 0


async def test_organization_invalidation_drops_the_keys_of_its_teams_only():
    store = Store()
    store.rows = {"a": Principal(key_hash="a", team_id="t1", organization_id="o1"),
                  "b": Principal(key_hash="b", team_id="t2", organization_id="o2"),
                  "c": Principal(key_hash="c")}
    cache = KeyCache(store.load, ttl=30, clock=Clock())
    await cache.get("a"), await cache.get("b"), await cache.get("c")
    cache.invalidate("org", "o1")
    assert len(cache) == 2 and store.calls == 3
    await cache.get("a")
    assert store.calls == 4


async def test_keys_seen_before_are_not_hashed_again_and_the_map_stays_bounded(monkeypatch):
    from starlette.requests import Request

    from proxy.auth import authenticator
    from proxy.auth.authenticator import Authenticator, FailureThrottle
    from proxy.auth.secrets import hash_key

    hashed: list[str] = []
    monkeypatch.setattr(authenticator, "hash_key", lambda token: hashed.append(token) or hash_key(token))
    store = Store()
    tokens = [f"sk-test-{i}" for i in range(5)]
    for t in tokens:
        store.rows[hash_key(t)] = Principal(key_hash=hash_key(t), key_alias=t)
    auth = Authenticator(None, KeyCache(store.load, ttl=30, clock=Clock()), FailureThrottle(100), known=2)

    async def who(token: str) -> str | None:
        request = Request({"type": "http", "headers": [(b"authorization", f"Bearer {token}".encode())],
                           "client": ("10.0.0.1", 1)})
        return (await auth.authenticate(request)).key_alias

    assert [await who(t) for t in tokens[:2]] == tokens[:2]
    assert [await who(t) for t in tokens[:2]] == tokens[:2]
    assert hashed == tokens[:2]  # the second time, from the map
    assert [await who(t) for t in tokens] == tokens  # past its bound the map starts over: still right
    assert hashed == tokens  # each of the three new ones hashed once
    assert len(auth._known) <= 2


async def test_the_change_feed_waits_for_ids_committed_out_of_order(tmp_path):
    """On Postgres a transaction that took a lower id can commit after a higher one was read: the
    feed keeps looking for the gap (for a while) instead of moving past it."""
    from sqlalchemy import insert

    from proxy.auth.changes import ChangeFeed
    from proxy.db.engine import Database
    from proxy.db.models import AuthChange

    from .test_accounting import migrate

    url = f"sqlite+aiosqlite:///{tmp_path}/feed.db"
    migrate(url)
    db = Database(url)
    store = Store()
    store.rows = {h: Principal(key_hash=h) for h in ("a", "b", "c")}
    cache = KeyCache(store.load, ttl=300, clock=Clock())
    feed = ChangeFeed(db, cache, gap_polls=3)

    async def change(ident: int, key: str) -> None:
        async with db.sessions() as s, s.begin():
            await s.execute(insert(AuthChange).values(id=ident, kind="key", op="update", ident=key))

    try:
        await feed._begin()
        for h in ("a", "b", "c"):
            await cache.get(h)
        await change(2, "b")  # id 1 was taken by a transaction still open
        assert await feed.poll() == 1 and len(cache) == 2
        await change(1, "a")  # ... which commits now
        assert await feed.poll() == 1 and len(cache) == 1
        await change(4, "c")  # id 3: rolled back, never comes
        for _ in range(4):
            await feed.poll()
        assert feed._horizon == 4 and not feed._missing and len(cache) == 0
        assert await feed.poll() == 0 and feed.applied == 3
    finally:
        await db.aclose()


async def test_background_refreshes_are_bounded_and_every_key_gets_one():
    store, clock = Store(), Clock()
    for i in range(100):
        store.rows[f"h{i}"] = Principal(key_hash=f"h{i}", key_alias="old")
    cache = KeyCache(store.load, ttl=30, clock=clock, max_refreshing=4)
    for i in range(100):
        await cache.get(f"h{i}")  # all loaded together, so all due together
    for i in range(100):
        store.rows[f"h{i}"] = Principal(key_hash=f"h{i}", key_alias="new")
    clock.now = 20  # past ttl / 2 for every entry
    store.calls, store.gate = 0, asyncio.Event()
    for i in range(100):
        assert (await cache.get(f"h{i}")).key_alias == "old"  # served at once, from the cache
    await asyncio.sleep(0.01)
    assert store.calls == 4  # not 100 tasks and sessions at once
    store.gate.set()
    for _ in range(200):  # later requests pick up the keys passed over
        aliases = [(await cache.get(f"h{i}")).key_alias for i in range(100)]
        if aliases == ["new"] * 100:
            break
        assert len(cache._refreshing) <= 4
        await asyncio.sleep(0.001)
    assert aliases == ["new"] * 100 and store.calls == 100  # each key refreshed once
