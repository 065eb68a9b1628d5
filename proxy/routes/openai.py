"""OpenAI's routes, under /v1 and /openai/v1."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from ..auth.principal import Principal
from ..errors import Forbidden, NotFound
from ..protocol.openai import ChatRequest, CompletionRequest, EmbeddingRequest
from ..services import ServicesDep

router = APIRouter(tags=["openai"])


async def caller(request: Request, services: ServicesDep) -> Principal:
    principal = await services.auth.authenticate(request)
    if principal.key_type == "management":
        raise Forbidden("this key is for management routes only", code="wrong_key_type")
    return principal


Caller = Annotated[Principal, Depends(caller)]


@router.post("/chat/completions", summary="Chat completion (JSON or SSE stream)")
async def chat_completions(request: Request, services: ServicesDep, principal: Caller) -> Response:
    return await services.gateway.serve(request, principal, "chat", ChatRequest)


@router.post("/completions", summary="Text completion (JSON or SSE stream)")
async def completions(request: Request, services: ServicesDep, principal: Caller) -> Response:
    return await services.gateway.serve(request, principal, "completions", CompletionRequest)


@router.post("/embeddings", summary="Embeddings")
async def embeddings(request: Request, services: ServicesDep, principal: Caller) -> Response:
    return await services.gateway.serve(request, principal, "embeddings", EmbeddingRequest)


# The routes the fast path (proxy/fastpath.py) dispatches to directly.
INFERENCE = {"/chat/completions": chat_completions, "/completions": completions, "/embeddings": embeddings}


def _model_card(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "keystile"}


@router.get("/models", summary="Models this key may use")
async def list_models(services: ServicesDep, principal: Caller) -> dict:
    names = [n for n in services.router.names() if principal.may_use(n)]
    names += [alias for alias, target in principal.aliases.items() if target in names and alias not in names]
    return {"object": "list", "data": [_model_card(n, services.started) for n in names]}


@router.get("/models/{model_id:path}", summary="One model")
async def get_model(model_id: str, services: ServicesDep, principal: Caller) -> dict:
    name = principal.resolve(model_id)
    if name not in services.router or not principal.may_use(name):
        raise NotFound(f"model '{model_id}' does not exist or is not served here")
    return _model_card(model_id, services.started)
