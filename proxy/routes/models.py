"""OpenAI's model listing, under /v1, /openai/v1 and at the root as LiteLLM serves it (the inference
routes are the OpenAI dialect's, proxy/dialects/openai.py)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from ..core import check_caller
from ..domain import Principal
from ..errors import NotFound
from ..services import ServicesDep

router = APIRouter(tags=["openai"])


async def caller(request: Request, services: ServicesDep) -> Principal:
    principal = await services.auth.authenticate(request)
    check_caller(principal)
    return principal


Caller = Annotated[Principal, Depends(caller)]


def _model_card(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "keystile"}


def _anthropic_card(name: str, created: int) -> dict:
    when = datetime.fromtimestamp(created, timezone.utc).isoformat().replace("+00:00", "Z")
    return {"type": "model", "id": name, "display_name": name, "created_at": when}


def _anthropic(request: Request) -> bool:
    """Anthropic's SDKs and Claude Code send `anthropic-version`; they get Anthropic's shapes."""
    return "anthropic-version" in request.headers


@router.get("/models", summary="Models this key may use (Anthropic's list shape with `anthropic-version`)")
async def list_models(request: Request, services: ServicesDep, principal: Caller) -> dict:
    names = [n for n in services.router.names() if principal.may_use(n)]  # not a key's aliases (as LiteLLM)
    if _anthropic(request):
        return {"data": [_anthropic_card(n, services.started) for n in names], "has_more": False,
                "first_id": names[0] if names else None, "last_id": names[-1] if names else None}
    return {"object": "list", "data": [_model_card(n, services.started) for n in names]}


@router.get("/models/{model_id:path}", summary="One model")
async def get_model(model_id: str, request: Request, services: ServicesDep, principal: Caller) -> dict:
    name = principal.resolve(model_id)
    if name not in services.router or not principal.may_use(name):
        raise NotFound(f"model '{model_id}' does not exist or is not served here")
    card = _anthropic_card if _anthropic(request) else _model_card
    return card(model_id, services.started)
