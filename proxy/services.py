"""The one Services object: built in the app's lifespan, closed on shutdown, reached through
typed dependencies. Nothing here is created at import."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import Depends, Request

from backends.http import ClientPool
from backends.router import Router

from .accounting.budgets import BudgetResetter
from .accounting.journal import Journal, default_directory
from .accounting.prices import PriceMap
from .accounting.writer import UsageWriter
from .auth.authenticator import Authenticator, FailureThrottle
from .auth.cache import KeyCache
from .auth.changes import ChangeFeed
from .auth.invalidation import Invalidator
from .auth.jwt import JWTVerifier
from .auth.records import load_jwt_principal, load_principal
from .auth.spend import SpendSync
from .cooldowns import CooldownSync
from .core import Gateway
from .db.engine import Database
from .limits import Limiter, make_limiter
from .models.build import build_router
from .models.catalog import ModelCatalog
from .models.secrets import Sealer
from .observe import Observers
from .settings import FileConfig, KeystileSettings, Settings

log = logging.getLogger("keystile")


def check_deployments(config: FileConfig) -> None:
    """Build every deployment's backend once, without starting anything, so a bad entry stops
    `keystile serve` with a ConfigError naming it before the server binds."""
    build_router(config, config.effective(), ClientPool())


@dataclass
class Services:
    settings: Settings
    config: FileConfig
    options: KeystileSettings
    pool: ClientPool
    router: Router
    db: Database
    redis: aioredis.Redis | None
    cache: KeyCache
    invalidator: Invalidator
    changes: ChangeFeed
    auth: Authenticator
    limiter: Limiter
    spend: SpendSync  # an admin's spend set, applied to the limiter's counters at once
    prices: PriceMap
    usage: UsageWriter
    budgets: BudgetResetter
    gateway: Gateway
    models: ModelCatalog
    started: int
    cooldowns: CooldownSync | None = None  # deployment cooldowns shared through Redis
    observers: Observers | None = None  # metrics, request logs, traces (proxy/observe)

    @classmethod
    async def start(cls, settings: Settings, config: FileConfig) -> Services:
        options = config.effective()
        pool = ClientPool(connect_timeout=options.connect_timeout)
        router = build_router(config, options, pool)
        master = settings.keystile_master_key or config.general_settings.get("master_key")
        db = Database(settings.database_url)
        redis = aioredis.from_url(settings.redis_url) if settings.redis_url else None

        models = ModelCatalog(router, config, db, redis, Sealer(settings.keystile_salt_key or master or ""), pool,
                              options.request_timeout, interval=options.model_poll_interval)

        async def load(token_hash: str):
            async with db.sessions() as session:
                return await load_principal(session, token_hash=token_hash, groups=models.access_groups)

        async def load_jwt(claims):
            async with db.sessions() as session:
                return await load_jwt_principal(session, claims=claims, groups=models.access_groups)

        cache = KeyCache(load, ttl=options.key_cache_ttl, negative_ttl=options.negative_cache_ttl, load_jwt=load_jwt)
        models.on_groups_changed = lambda: cache.invalidate("all")
        limiter = make_limiter(settings.redis_url, lease_ttl=max(900.0, 2 * options.request_timeout))
        spend = SpendSync(db, limiter)
        changes = ChangeFeed(db, cache, on_spend=spend.changed)
        invalidator = Invalidator(cache, redis)
        jwt = JWTVerifier(options.jwt) if options.jwt else None
        auth = Authenticator(master, cache, FailureThrottle(options.auth_failures_per_minute), jwt)
        prices = PriceMap()
        await asyncio.to_thread(prices.load)
        journal = Journal(options.usage_journal or default_directory(settings.database_url))
        leftover = journal.open()
        if leftover:
            log.info("usage journal %s: %d files of earlier runs to write", journal.directory, leftover)
        usage = UsageWriter(db, journal=journal)
        usage.start()
        gateway = Gateway(router, limiter, prices, usage, stream_keepalive=options.stream_keepalive)
        services = cls(settings=settings, config=config, options=options, pool=pool, router=router, db=db,
                       redis=redis, cache=cache, invalidator=invalidator, changes=changes, auth=auth, limiter=limiter,
                       spend=spend, prices=prices,
                       usage=usage, budgets=BudgetResetter(db, invalidator.publish), gateway=gateway,
                       models=models, started=int(time.time()))
        services.observers = Observers.start(gateway, router, usage, options,
                                             traces=bool(settings.otel_exporter_otlp_endpoint))
        if services.observers.tracer is not None:
            services.observers.tracer.follow(gateway, pool)  # spans at admission; traceparent to upstreams
        await changes.start()
        await invalidator.start()
        services.budgets.start()
        services.cooldowns = CooldownSync(router, redis)
        await services.cooldowns.start()
        for d in router.deployments():
            await d.backend.start()  # local workers load in the background; requests get 503 until ready
        await models.start()  # the database's models join the map (and start their own backends)
        return services

    async def aclose(self) -> None:
        await self.models.aclose()
        await asyncio.gather(*(d.backend.aclose() for d in self.router.deployments()), return_exceptions=True)
        await self.pool.aclose()
        if self.cooldowns is not None:
            await self.cooldowns.aclose()
        await self.budgets.aclose()
        await self.usage.aclose(timeout=10)
        if self.observers is not None:
            await self.observers.aclose()
        await self.limiter.aclose()
        await self.invalidator.aclose()
        await self.changes.aclose()
        await self.auth.aclose()
        await self.cache.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        await self.db.aclose()


async def get_services(request: Request) -> Services:
    """Async on purpose: a plain function would be run in a worker thread on every request."""
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]
