"""One model_list entry (config.yaml's or the database's) -> what the router serves: a Deployment,
or a WildcardEntry when its model_name is a pattern (`openai/*`, `*`)."""

from __future__ import annotations

from backends.http import ClientPool
from backends.registry import LOCAL_PROVIDERS, make_backend
from backends.router import Deployment, Router, RouterPolicy
from backends.wildcards import WildcardEntry, is_pattern

from ..settings import ConfigError, FileConfig, KeystileSettings, ModelEntry

Served = Deployment | WildcardEntry


def _price(entry: ModelEntry, field: str) -> float | None:
    """A per-token price from model_info, else from litellm_params (where LiteLLM files often put it)."""
    value = getattr(entry.model_info, field)
    return value if value is not None else entry.litellm_params.extra_params().get(field)


def served(entry: ModelEntry, ident: str, *, pool: ClientPool, timeout: float) -> Served:
    """Build the entry's backend (nothing is started); ValueError/TypeError says what is wrong."""
    p = entry.litellm_params
    params = p.model_dump(exclude_none=True)
    rpm = entry.rpm if entry.rpm is not None else p.rpm
    tpm = entry.tpm if entry.tpm is not None else p.tpm
    prices = {"input_cost_per_token": _price(entry, "input_cost_per_token"),
              "output_cost_per_token": _price(entry, "output_cost_per_token")}
    if is_pattern(entry.model_name):
        if p.provider in LOCAL_PROVIDERS:
            raise ValueError("a wildcard model_name cannot serve a local model")

        def make(upstream: str, public_name: str):
            return make_backend(public_name, {**params, "model": upstream}, pool=pool, timeout=timeout)

        make(p.model.replace("*", "x"), entry.model_name)  # the parameters are checked now, not on first use
        return WildcardEntry(pattern=entry.model_name, template=p.model, make=make, id=ident, weight=p.weight,
                             rpm=rpm, tpm=tpm, **prices)
    backend = make_backend(entry.model_name, params, pool=pool, timeout=timeout)
    return Deployment(model_name=entry.model_name, id=ident, backend=backend, upstream=p.model, weight=p.weight,
                      rpm=rpm, tpm=tpm, **prices)


def config_id(entry: ModelEntry, index: int) -> str:
    return entry.model_info.id or f"{entry.model_name}-{index}"


def build_router(config: FileConfig, options: KeystileSettings, pool: ClientPool) -> Router:
    deployments: list[Deployment] = []
    wildcards: list[WildcardEntry] = []
    for i, entry in enumerate(config.model_list):
        try:
            made = served(entry, config_id(entry, i), pool=pool, timeout=options.request_timeout)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"model_list[{i}] (model_name: {entry.model_name}): {exc}") from exc
        (wildcards if isinstance(made, WildcardEntry) else deployments).append(made)  # type: ignore[arg-type]
    fallbacks: dict[str, list[str]] = {}
    for rule in options.fallbacks:
        for name, targets in rule.items():
            fallbacks.setdefault(name, []).extend(targets)
    policy = RouterPolicy(num_retries=options.num_retries, allowed_fails=options.allowed_fails,
                          cooldown_time=options.cooldown_time, fallbacks=fallbacks, strategy=options.routing_strategy)
    return Router(deployments, policy, wildcards=wildcards)
