"""The live model map: config.yaml's model_list plus the models added through the API (the
proxy_models table), applied to the router on every gateway process.

A write (routes/model_admin.py) bumps `model_revision` in its transaction, applies the change here
at once and publishes it on Redis (`keystile:models`), which the other processes apply within
milliseconds. Every process also polls the revision (one primary-key read every `interval`
seconds), so without Redis, or with a lost message, a change is applied within a second. A model
is rebuilt only when its row changed; a removed model's requests in flight finish on it.

Name clashes: a model added through the API whose model_name is also config.yaml's (or another
added model's) joins that model as one more deployment, load-balanced with it, as in LiteLLM.
Ids are unique across both (a config entry's model_info.id, else `<model_name>-<index>`).
Access groups (model_info.access_groups) are gathered from both; when they change, cached
principals are dropped (their allowed models were expanded from them)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from backends.http import ClientPool
from backends.router import Deployment, Router
from backends.wildcards import WildcardEntry

from ..db.engine import Database
from ..db.models import ProxyModel
from ..db.proxy_models import all_models, revision
from ..outage import Outage, poll_every
from ..pubsub import Channel
from ..settings import ConfigError, FileConfig, ModelEntry, resolve_env_refs
from .build import Served, config_id, served
from .secrets import Sealer

log = logging.getLogger("keystile")
CHANNEL = "keystile:models"


@dataclass
class Stored:
    """A model of the database as it is served: its row's fingerprint, entry and router object."""

    fingerprint: bytes
    entry: ModelEntry
    row: ProxyModel
    served: Served


def entry_of(row: ProxyModel, params: dict[str, Any]) -> ModelEntry:
    """A row as a model_list entry (`os.environ/VAR` references resolved; ValueError if unset)."""
    try:
        resolved = resolve_env_refs(params, "litellm_params")
    except ConfigError as exc:  # an environment variable is not set
        raise ValueError(str(exc)) from exc
    return ModelEntry.model_validate({"model_name": row.model_name, "litellm_params": resolved,
                                      "model_info": {**row.model_info, "id": row.model_id}})


def access_groups_of(entries: list[ModelEntry]) -> dict[str, frozenset[str]]:
    groups: dict[str, set[str]] = {}
    for entry in entries:
        for group in (entry.model_info.model_extra or {}).get("access_groups") or ():
            if isinstance(group, str):
                groups.setdefault(group, set()).add(entry.model_name)
    return {g: frozenset(names) for g, names in groups.items()}


class ModelCatalog:
    def __init__(self, router: Router, config: FileConfig, db: Database, redis: aioredis.Redis | None,
                 sealer: Sealer, pool: ClientPool, timeout: float, *, interval: float = 0.5):
        self.router, self.db, self.sealer, self.pool, self.timeout = router, db, sealer, pool, timeout
        self.interval = interval
        self.config_entries = [(config_id(e, i), e) for i, e in enumerate(config.model_list)]
        self.stored: dict[str, Stored] = {}
        self.revision: int | None = None
        self.access_groups = access_groups_of([e for _, e in self.config_entries])
        self.on_groups_changed: Callable[[], None] | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None
        self._outage = Outage(log, "model catalog", "read models", "serving the models known so far")
        self._channel = Channel(redis, CHANNEL, lambda _: self._kick(), what="model changes",
                                on_subscribe=self._kick) if redis is not None else None
        self._kicked = asyncio.Event()

    def config_ids(self) -> set[str]:
        return {ident for ident, _ in self.config_entries}

    async def start(self) -> None:
        try:
            await self.sync()
        except Exception as exc:  # noqa: BLE001 - the poll loop tries again
            self._outage.failed(exc)
        self._task = asyncio.create_task(poll_every(self.interval, self.sync, self._outage, wake=self._kicked),
                                         name="keystile-model-catalog")
        if self._channel is not None:
            await self._channel.start()

    def _kick(self) -> None:
        self._kicked.set()

    async def sync(self, *, force: bool = False) -> None:
        """Apply the database's models if their revision moved since the last look."""
        async with self._lock:
            async with self.db.sessions() as session:
                current = await revision(session)
                if current == self.revision and not force:
                    return
                rows = await all_models(session)
            await self._apply(rows)
            self.revision = current

    async def changed(self) -> None:
        """After a write committed by this process: apply it now, and tell the others."""
        try:
            await self.sync(force=True)
        except Exception as exc:  # noqa: BLE001 - committed; the poll applies it once the database answers
            self._outage.failed(exc)
        if self._channel is not None:
            try:
                await self._channel.publish({"revision": self.revision})
            except Exception as exc:  # the others' polls find it within a second
                log.warning("model change not published (%s); other instances apply it within a second", exc)

    async def _apply(self, rows: list[ProxyModel]) -> None:
        seen: set[str] = set()
        config_ids = self.config_ids()
        for row in rows:
            if row.model_id in config_ids:
                continue  # refused by /model/new; a row written by hand does not shadow the file
            seen.add(row.model_id)
            fingerprint = orjson.dumps([row.model_name, row.litellm_params, row.model_info], option=orjson.OPT_SORT_KEYS)
            old = self.stored.get(row.model_id)
            if old is not None and old.fingerprint == fingerprint:
                old.row = row
                continue
            try:
                entry = entry_of(row, self.sealer.open(row.litellm_params))
                made = served(entry, row.model_id, pool=self.pool, timeout=self.timeout)
            except Exception as exc:  # noqa: BLE001 - one unusable row must not stop the others
                log.error("model %s (%s) is not served: %s", row.model_id, row.model_name, exc)
                if old is not None:
                    await self._remove(old)
                    del self.stored[row.model_id]
                continue
            if old is not None:
                await self._remove(old)
            await self._add(made)
            self.stored[row.model_id] = Stored(fingerprint, entry, row, made)
        for model_id in [m for m in self.stored if m not in seen]:
            await self._remove(self.stored.pop(model_id))
        groups = access_groups_of([e for _, e in self.config_entries] + [s.entry for s in self.stored.values()])
        if groups != self.access_groups:
            self.access_groups = groups
            if self.on_groups_changed is not None:
                self.on_groups_changed()

    async def _add(self, made: Served) -> None:
        if isinstance(made, WildcardEntry):
            self.router.add_wildcard(made)
            return
        self.router.add(made)
        await made.backend.start()  # a local model loads in the background; requests get 503 until then

    async def _remove(self, stored: Stored) -> None:
        made = stored.served
        if isinstance(made, WildcardEntry):
            self.router.remove_wildcard(made)
            return
        assert isinstance(made, Deployment)
        self.router.remove(made)
        await made.backend.aclose()

    def entries(self) -> list[tuple[str, ModelEntry, ProxyModel | None]]:
        """Every model: config.yaml's (without a row), then the database's."""
        return [(i, e, None) for i, e in self.config_entries] + \
            [(m, s.entry, s.row) for m, s in self.stored.items()]

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._channel is not None:
            await self._channel.aclose()
