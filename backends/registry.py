"""Builds the backend for one deployment from its `litellm_params`, by provider prefix."""

from __future__ import annotations

from typing import Any

from .base import Backend
from .http import ClientPool
from .openai_compat import NATIVE_FIM, OPENAI_COMPATIBLE, OpenAICompatBackend

LOCAL_PROVIDERS = ("llamacpp", "llama_cpp_python")


def make_backend(public_name: str, params: dict[str, Any], *, pool: ClientPool, timeout: float) -> Backend:
    """`params` is a deployment's litellm_params (env references already resolved)."""
    params = dict(params)
    provider, upstream = params.pop("model").split("/", 1)
    timeout = params.pop("timeout", None) or timeout
    stream_timeout = params.pop("stream_timeout", None)
    for routing_only in ("rpm", "tpm", "weight", "max_retries", "input_cost_per_token", "output_cost_per_token"):
        params.pop(routing_only, None)
    if provider in LOCAL_PROVIDERS:
        from .llamacpp import LlamaCppBackend

        return LlamaCppBackend(public_name, upstream, request_timeout=timeout, **params)
    api_base = params.pop("api_base", None)
    if provider in OPENAI_COMPATIBLE and (api_base or OPENAI_COMPATIBLE[provider]):
        return OpenAICompatBackend(public_name, upstream, api_base=api_base or OPENAI_COMPATIBLE[provider],
                                   api_key=params.pop("api_key", None), pool=pool, timeout=timeout,
                                   stream_timeout=stream_timeout, native_fim=provider in NATIVE_FIM)
    if provider in OPENAI_COMPATIBLE:
        raise ValueError(f"provider '{provider}' needs api_base")
    if provider == "anthropic":
        from .anthropic import AnthropicBackend

        return AnthropicBackend(public_name, upstream, api_base=api_base, api_key=params.pop("api_key", None),
                                pool=pool, timeout=timeout, stream_timeout=stream_timeout, params=params)
    from .providers import LiteLLMBackend

    return LiteLLMBackend(public_name, f"{provider}/{upstream}", timeout=timeout,
                          params={**params, "api_base": api_base})
