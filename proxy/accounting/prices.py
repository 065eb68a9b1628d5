"""What a request costs: per-token prices from litellm's bundled model cost map, overridden by config.

The map is litellm's `model_prices_and_context_window_backup.json`, read from the installed
package's files without importing litellm (importing it is slow and may reach the network). It is
loaded lazily, once per `PriceMap`, and only the fields used here are kept in memory.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from backends.registry import LOCAL_PROVIDERS

log = logging.getLogger("keystile")

LITELLM_COST_MAP = "model_prices_and_context_window_backup.json"
MAX_RESOLVED = 4096


class CostOverrides(Protocol):
    """Per-token prices from config (a deployment's `model_info`); None means "not configured".

    `backends.router.Deployment` satisfies this protocol, so a deployment can be passed as is."""

    @property
    def input_cost_per_token(self) -> float | None: ...

    @property
    def output_cost_per_token(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class Price:
    """Resolved USD prices per token, and the model's output limit when the map knows it."""

    input_cost_per_token: float = 0.0
    output_cost_per_token: float = 0.0
    max_output_tokens: int | None = None
    cache_read_input_token_cost: float | None = None
    """A prompt token read from the provider's cache (None: priced as any prompt token)."""
    cache_creation_input_token_cost: float | None = None
    """A prompt token written to the provider's cache (None: priced as any prompt token)."""


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else 0.0


def _entry(spec: Mapping[str, Any]) -> tuple[str, Price]:
    limit = spec.get("max_output_tokens") or spec.get("max_tokens")
    return str(spec.get("litellm_provider") or ""), Price(
        input_cost_per_token=_number(spec.get("input_cost_per_token")),
        output_cost_per_token=_number(spec.get("output_cost_per_token")),
        max_output_tokens=limit if isinstance(limit, int) and limit > 0 else None,
        cache_read_input_token_cost=_optional(spec.get("cache_read_input_token_cost")),
        cache_creation_input_token_cost=_optional(spec.get("cache_creation_input_token_cost")),
    )


def _optional(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) and value >= 0 else None


def bundled_map_path() -> Path | None:
    """Where the installed litellm keeps its cost map, found via its import spec (not imported)."""
    spec = importlib.util.find_spec("litellm")
    if spec is None:
        return None
    reader = spec.loader.get_resource_reader(spec.name) if spec.loader and hasattr(
        spec.loader, "get_resource_reader") else None
    if reader is not None and hasattr(reader, "files"):
        candidate = reader.files() / LITELLM_COST_MAP  # importlib.resources' Traversable
        if candidate.is_file():
            return Path(str(candidate))
    for location in spec.submodule_search_locations or ():
        candidate = Path(location) / LITELLM_COST_MAP
        if candidate.is_file():
            return candidate
    return None


class PriceMap:
    """Prices per upstream model (`provider/name`, a deployment's `litellm_params.model`).

    Resolution, per field: a configured override wins (0 is a valid override); otherwise local
    providers (`llamacpp`) are free; otherwise litellm's map, looked up as the full upstream
    (`azure/gpt-4o`, `groq/...`) and then as the bare name when the entry's provider matches
    (`openai/gpt-4o` -> `gpt-4o`, `anthropic/claude-...` -> `claude-...`); unknown models cost 0.
    """

    def __init__(self, path: Path | None = None, *, local_providers: Iterable[str] = LOCAL_PROVIDERS,
                 default_max_completion_tokens: int = 4096):
        """`path`: a JSON file in litellm's format (default: litellm's bundled map).
        `default_max_completion_tokens`: what `max_cost` assumes when neither the request nor the
        map gives a completion limit."""
        self._path = path
        self._local = frozenset(local_providers)
        self._default_max_completion = default_max_completion_tokens
        self._entries: dict[str, tuple[str, Price]] | None = None
        self._lock = threading.Lock()
        self._resolved: dict[tuple[str, float | None, float | None], Price] = {}

    def load(self) -> int:
        """Read the map now (idempotent, thread-safe); returns how many models it knows.
        Call it off the event loop at startup (`await asyncio.to_thread(prices.load)`) to keep the
        first priced request from paying for parsing ~3 MB of JSON."""
        return len(self._loaded())

    def _loaded(self) -> dict[str, tuple[str, Price]]:
        if self._entries is None:
            with self._lock:
                if self._entries is None:
                    self._entries = self._read()
        return self._entries

    def _read(self) -> dict[str, tuple[str, Price]]:
        path = self._path or bundled_map_path()
        if path is None:
            log.warning("no model cost map found (litellm not installed?): unconfigured models cost 0")
            return {}
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("cannot read model cost map %s (%s): unconfigured models cost 0", path, exc)
            return {}
        return {name: _entry(spec) for name, spec in raw.items()
                if isinstance(spec, dict) and name != "sample_spec"}

    def lookup(self, upstream: str) -> Price | None:
        """The map's price for an upstream model, or None when the map doesn't know it."""
        entries = self._loaded()
        found = entries.get(upstream)
        if found is not None:
            return found[1]
        provider, sep, name = upstream.partition("/")
        if not sep:
            return None
        found = entries.get(name)
        if found is not None and found[0].startswith(provider):
            return found[1]
        return None

    def price(self, upstream: str, overrides: CostOverrides | None = None) -> Price:
        """Per-token prices after overrides (see the class docstring for the order); remembered per
        (upstream, overrides), since it is asked on every request for a handful of deployments."""
        inp = getattr(overrides, "input_cost_per_token", None)
        out = getattr(overrides, "output_cost_per_token", None)
        key = (upstream, inp, out)
        resolved = self._resolved.get(key)
        if resolved is None:
            if len(self._resolved) >= MAX_RESOLVED:  # names matched by wildcards are unbounded
                self._resolved.clear()
            provider = upstream.partition("/")[0]
            base = (None if provider in self._local else self.lookup(upstream)) or Price()
            # The map's cache prices go with its input price: a configured input price has none.
            resolved = self._resolved[key] = Price(
                input_cost_per_token=base.input_cost_per_token if inp is None else float(inp),
                output_cost_per_token=base.output_cost_per_token if out is None else float(out),
                max_output_tokens=base.max_output_tokens,
                cache_read_input_token_cost=base.cache_read_input_token_cost if inp is None else None,
                cache_creation_input_token_cost=base.cache_creation_input_token_cost if inp is None else None)
        return resolved

    def cost(self, upstream: str, prompt_tokens: int, completion_tokens: int,
             overrides: CostOverrides | None = None, *, cache_read_tokens: int = 0,
             cache_creation_tokens: int = 0) -> float:
        """USD for a finished request: prompt x input price + completion x output price, where the
        prompt tokens read from / written to the provider's cache (part of `prompt_tokens`) are at
        the map's cache prices when it has them."""
        p = self.price(upstream, overrides)
        prompt = max(0, prompt_tokens)
        total = max(0, completion_tokens) * p.output_cost_per_token
        for tokens, price in ((cache_read_tokens, p.cache_read_input_token_cost),
                              (cache_creation_tokens, p.cache_creation_input_token_cost)):
            if price is not None and tokens > 0:
                tokens = min(tokens, prompt)
                prompt -= tokens
                total += tokens * price
        return total + prompt * p.input_cost_per_token

    def completion_allowance(self, upstream: str, max_completion_tokens: int | None,
                             overrides: CostOverrides | None = None) -> int:
        """The completion tokens a request is assumed to use at most: `max_completion_tokens` (the
        request's `max_tokens` / `max_completion_tokens`), else the model's output limit from the
        map, else `default_max_completion_tokens`. A stream is cut there (core/cutoff.py)."""
        if max_completion_tokens is not None:
            return max(0, max_completion_tokens)
        return self.price(upstream, overrides).max_output_tokens or self._default_max_completion

    def max_cost(self, upstream: str, prompt_tokens_estimate: int, max_completion_tokens: int | None,
                 overrides: CostOverrides | None = None) -> float:
        """The most a request can cost, to reserve against a budget before it runs: the prompt
        estimate and `completion_allowance` completion tokens."""
        p = self.price(upstream, overrides)
        completion = self.completion_allowance(upstream, max_completion_tokens, overrides)
        return max(0, prompt_tokens_estimate) * p.input_cost_per_token + completion * p.output_cost_per_token
