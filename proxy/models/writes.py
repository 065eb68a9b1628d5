"""Adding, changing and removing models through the API: checked by building them first (a bad
model is a 400 before anything is written), written with the revision bump in one transaction,
then applied here and announced (catalog.changed)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from backends.registry import LOCAL_PROVIDERS

from ..db.models import ProxyModel
from ..db.proxy_models import bump
from ..durations import utcnow
from ..errors import BadRequest, Conflict, NotFound
from .build import served
from .catalog import ModelCatalog, entry_of


def _check(catalog: ModelCatalog, row: ProxyModel, params: dict[str, Any]) -> None:
    """Build the model once, without starting it: whatever is wrong is a 400 naming it."""
    provider = str(params.get("model", "")).split("/", 1)[0]
    if provider in LOCAL_PROVIDERS:
        raise BadRequest("local models are deployed with POST /api/v1/deploy, not /model/new",
                         param="litellm_params.model")
    try:
        served(entry_of(row, params), row.model_id, pool=catalog.pool, timeout=catalog.timeout)
    except Exception as exc:  # noqa: BLE001 - whatever a backend's constructor refuses is bad input here
        raise BadRequest(f"this model cannot be served: {exc}", param="litellm_params",
                         code="invalid_model") from exc


def _free_id(catalog: ModelCatalog, model_id: str) -> None:
    if model_id in catalog.config_ids() or model_id in catalog.router.ids():
        raise Conflict(f"model id '{model_id}' is used by config.yaml or a deployment", param="model_info.id")


async def _stored(session: AsyncSession, catalog: ModelCatalog, model_id: str) -> ProxyModel:
    row = await session.get(ProxyModel, model_id)
    if row is None:
        if model_id in catalog.config_ids():
            raise BadRequest(f"model '{model_id}' comes from config.yaml; change it there", param="id",
                             code="config_model")
        raise NotFound(f"model '{model_id}' not found", code="model_not_found")
    return row


async def create(catalog: ModelCatalog, session: AsyncSession, *, model_name: str, params: dict[str, Any],
                 info: dict[str, Any], by: str | None) -> ProxyModel:
    model_id = info.pop("id", None) or str(uuid.uuid4())
    if await session.get(ProxyModel, model_id) is not None:
        raise Conflict(f"a model with id '{model_id}' exists", param="model_info.id")
    _free_id(catalog, model_id)
    now = utcnow()
    row = ProxyModel(model_id=model_id, model_name=model_name, litellm_params={}, model_info=info,
                     created_by=by, updated_by=by, created_at=now, updated_at=now)
    _check(catalog, row, params)
    row.litellm_params = catalog.sealer.seal(params)
    session.add(row)
    await bump(session)
    return row


async def update(catalog: ModelCatalog, session: AsyncSession, model_id: str, *, model_name: str | None,
                 params: dict[str, Any] | None, info: dict[str, Any] | None, by: str | None) -> ProxyModel:
    """LiteLLM's update: the given litellm_params and model_info fields replace the stored ones
    (null removes one), the others stay."""
    row = await _stored(session, catalog, model_id)
    unreadable: list[str] = []
    merged = catalog.sealer.open(row.litellm_params, unreadable=unreadable)
    missing = [name for name in unreadable if name not in (params or {})]
    if missing:
        raise BadRequest(f"the stored litellm_params.{missing[0]} cannot be decrypted (KEYSTILE_SALT_KEY or the "
                         f"master key changed); send it again", param=f"litellm_params.{missing[0]}",
                         code="undecryptable")
    for name, value in (params or {}).items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    new_info = {k: v for k, v in {**row.model_info, **(info or {})}.items() if v is not None and k != "id"}
    candidate = ProxyModel(model_id=model_id, model_name=model_name or row.model_name, model_info=new_info)
    _check(catalog, candidate, merged)
    row.model_name, row.model_info = candidate.model_name, new_info
    row.litellm_params = catalog.sealer.seal(merged)
    row.updated_by, row.updated_at = by, utcnow()
    await bump(session)
    return row


async def delete(catalog: ModelCatalog, session: AsyncSession, model_id: str) -> None:
    row = await _stored(session, catalog, model_id)
    await session.delete(row)
    await bump(session)
