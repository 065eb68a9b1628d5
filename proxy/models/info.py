"""What /model/info, /v2/model/info and /model_group/info answer, in LiteLLM's shapes: every model
of the map (config.yaml's, the database's, those deployed through /api/v1/deploy) that the caller
may use, credentials left out or masked (secrets.public); `api_base` only for admins."""

from __future__ import annotations

from typing import Any

from backends.router import Deployment

from ..accounting.prices import PriceMap
from ..domain import Principal
from ..settings import ModelEntry
from .catalog import ModelCatalog
from .secrets import public


def _model_info(ident: str, entry: ModelEntry | None, d_upstream: str, db_model: bool, prices: PriceMap) -> dict:
    info: dict[str, Any] = dict(entry.model_info.model_dump(exclude_none=True)) if entry else {}
    provider, _, name = d_upstream.partition("/")
    price = prices.price(d_upstream, entry.model_info if entry else None)
    info.update(id=ident, db_model=db_model, key=name, litellm_provider=provider,
                input_cost_per_token=price.input_cost_per_token, output_cost_per_token=price.output_cost_per_token)
    info.setdefault("max_output_tokens", price.max_output_tokens)
    info.setdefault("max_tokens", price.max_output_tokens)
    info.setdefault("max_input_tokens", None)
    info.setdefault("mode", "chat")
    info.setdefault("access_groups", [])
    return info


def model_entries(catalog: ModelCatalog, prices: PriceMap, principal: Principal) -> list[dict]:
    """Every model the caller may use, as LiteLLM's /model/info lists them."""
    out = []
    known: set[str] = set()
    for ident, entry, row in catalog.entries():
        known.add(ident)
        if not principal.may_use(entry.model_name):
            continue
        params = public(entry.litellm_params.model_dump(exclude_none=True) if row is None
                        else catalog.sealer.open(row.litellm_params))
        if not principal.may_administer:
            params.pop("api_base", None)
        out.append({"model_name": entry.model_name, "litellm_params": params,
                    "model_info": _model_info(ident, entry, entry.litellm_params.model, row is not None, prices)})
    for d in catalog.router.deployments():  # deployed through /api/v1/deploy
        if d.id not in known and principal.may_use(d.model_name):
            out.append(_deployed(d, prices))
    return out


def _deployed(d: Deployment, prices: PriceMap) -> dict:
    info = _model_info(d.id, None, d.upstream, True, prices)
    info["managed_deployment"] = True
    return {"model_name": d.model_name, "litellm_params": {"model": d.upstream}, "model_info": info}


def model_groups(entries: list[dict]) -> list[dict]:
    """LiteLLM's /model_group/info: one row per public name, over its deployments."""
    groups: dict[str, dict] = {}
    for e in entries:
        info, name = e["model_info"], e["model_name"]
        g = groups.get(name)
        if g is None:
            g = groups[name] = {
                "model_group": name, "providers": [], "max_input_tokens": info.get("max_input_tokens"),
                "max_output_tokens": info.get("max_output_tokens"),
                "input_cost_per_token": info.get("input_cost_per_token"),
                "output_cost_per_token": info.get("output_cost_per_token"), "mode": info.get("mode"),
                "tpm": None, "rpm": None, "supports_parallel_function_calling": False,
                "supports_vision": bool(info.get("supports_vision")),
                "supports_function_calling": bool(info.get("supports_function_calling")),
                "supported_openai_params": None, "configurable_clientside_auth_params": None, "access_groups": []}
        if info["litellm_provider"] not in g["providers"]:
            g["providers"].append(info["litellm_provider"])
        for limit in ("tpm", "rpm"):
            value = e["litellm_params"].get(limit)
            if isinstance(value, int):
                g[limit] = (g[limit] or 0) + value
        g["access_groups"] = sorted(set(g["access_groups"]) | set(info.get("access_groups") or ()))
    return list(groups.values())
