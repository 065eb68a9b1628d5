"""LiteLLM's model management routes: /model/new, /model/update (and PATCH /model/{id}/update),
/model/delete for the master key and admins; /model/info, /v2/model/info and /model_group/info
for any key (the models it may use)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from ..admin import CONFLICT, ERRORS, NOT_FOUND, Admin, AdminRoute, AnyCaller, Page, Size, commit, pages, sessions
from ..db.models import ProxyModel
from ..domain import Principal
from ..errors import BadRequest
from ..models import writes
from ..models.info import model_entries, model_groups
from ..models.secrets import public
from ..protocol.fields import ModelName
from ..protocol.models import (Deleted, ModelDelete, ModelGroups, ModelId, ModelInfoList, ModelInfoPage, ModelNew,
                               ModelRow, ModelUpdate)
from ..services import Services, ServicesDep

router = APIRouter(tags=["models"], route_class=AdminRoute, responses=ERRORS)


def _by(caller: Principal) -> str:
    return caller.user_id or caller.key_alias or ("master" if caller.is_master else caller.key_id or "admin")


def _row(services: Services, row: ProxyModel) -> dict:
    return {"model_id": row.model_id, "model_name": row.model_name,
            "litellm_params": public(services.models.sealer.open(row.litellm_params)),
            "model_info": {**row.model_info, "id": row.model_id}, "created_at": row.created_at,
            "updated_at": row.updated_at, "created_by": row.created_by, "updated_by": row.updated_by}


def _extras(model: Any) -> dict:
    return model.model_dump(exclude_unset=True) if model is not None else {}


@router.post("/model/new", summary="Add a model (kept in the database, served by every instance)",
             response_model=ModelRow, responses=CONFLICT)
async def new(body: ModelNew, services: ServicesDep, caller: Admin) -> dict:
    async with sessions(services) as session:
        row = await writes.create(services.models, session, model_name=body.model_name,
                                  params=body.litellm_params.model_dump(exclude_none=True),
                                  info=_extras(body.model_info), by=_by(caller))
        await commit(session, "model")
    await services.models.changed()
    return _row(services, row)


async def _update(services: Services, model_id: str, body: ModelUpdate, caller: Principal) -> dict:
    async with sessions(services) as session:
        row = await writes.update(services.models, session, model_id, model_name=body.model_name,
                                  params=_extras(body.litellm_params), info=_extras(body.model_info), by=_by(caller))
        await commit(session, "model")
    await services.models.changed()
    return _row(services, row)


@router.post("/model/update", summary="Change a model added through the API (model_info.id names it)",
             response_model=ModelRow, responses=NOT_FOUND)
async def update(body: ModelUpdate, services: ServicesDep, caller: Admin) -> dict:
    model_id = body.model_info.id if body.model_info is not None else None
    if not model_id:
        raise BadRequest("model_info.id names the model to change", param="model_info.id")
    return await _update(services, model_id, body, caller)


@router.patch("/model/{model_id}/update", summary="Change a model added through the API (LiteLLM's PATCH form)",
              response_model=ModelRow, responses=NOT_FOUND)
async def patch(model_id: Annotated[ModelId, Path()], body: ModelUpdate, services: ServicesDep,
                caller: Admin) -> dict:
    return await _update(services, model_id, body, caller)


@router.post("/model/delete", summary="Remove a model added through the API", response_model=Deleted,
             responses=NOT_FOUND)
async def delete(body: ModelDelete, services: ServicesDep, _: Admin) -> dict:
    async with sessions(services) as session:
        await writes.delete(services.models, session, body.id)
        await commit(session, "model")
    await services.models.changed()
    return {"message": f"Model: {body.id} deleted successfully"}


@router.get("/model/info", summary="Models this key may use, with their parameters (credentials left out)",
            response_model=ModelInfoList)
@router.get("/v1/model/info", include_in_schema=False)
async def info(services: ServicesDep, caller: AnyCaller,
               litellm_model_id: Annotated[ModelId | None, Query(description="one model by id")] = None) -> dict:
    data = model_entries(services.models, services.prices, caller)
    if litellm_model_id is not None:
        data = [e for e in data if e["model_info"]["id"] == litellm_model_id]
    return {"data": data}


@router.get("/v2/model/info", summary="Models this key may use, filtered and paginated", response_model=ModelInfoPage)
async def info_v2(services: ServicesDep, caller: AnyCaller, page: Page = 1, size: Size = 50,
                  model: Annotated[ModelName | None, Query(description="public model name")] = None,
                  modelId: Annotated[ModelId | None, Query(description="model id")] = None,  # noqa: N803 - LiteLLM's name
                  search: Annotated[ModelName | None, Query(description="part of the model name")] = None,
                  user_models_only: bool = False) -> dict:
    data = model_entries(services.models, services.prices, caller)
    if model is not None:
        data = [e for e in data if e["model_name"] == model]
    if modelId is not None:
        data = [e for e in data if e["model_info"]["id"] == modelId]
    if search is not None:
        data = [e for e in data if search.lower() in e["model_name"].lower()]
    total = len(data)
    return {"data": data[(page - 1) * size:page * size], "total_count": total, "current_page": page,
            "total_pages": pages(total, size), "size": size}


@router.get("/model_group/info", summary="Public model names this key may use, with their providers and limits",
            response_model=ModelGroups)
async def group_info(services: ServicesDep, caller: AnyCaller,
                     model_group: Annotated[ModelName | None, Query(description="one public name")] = None) -> dict:
    groups = model_groups(model_entries(services.models, services.prices, caller))
    if model_group is not None:
        groups = [g for g in groups if g["model_group"] == model_group]
    return {"data": groups}
