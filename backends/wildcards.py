"""Wildcard model names, as LiteLLM's config.yaml writes them: an entry with `model_name: "openai/*"`
(or `"*"`) and `litellm_params.model: "openai/*"` serves any requested name that matches the
pattern, with each `*` of the provider model replaced by what the `*`s of the name matched:
`openai/gpt-4o` -> `openai/gpt-4o` for the first, `gpt-4o` -> `openai/gpt-4o` for `"*"`.

A name that matches is served by deployments made for it on first use (the backend is bound to
its upstream model name) and kept in a bounded most-recently-used table, so a caller sending
arbitrary names cannot grow memory without limit. Exact names always win over patterns; among
patterns the most specific (most literal characters) wins, then the first in model_list.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from .base import Backend

MAX_CONCRETE = 1024  # matched names whose deployments are kept


def is_pattern(name: str) -> bool:
    return "*" in name


def compile_pattern(pattern: str) -> re.Pattern[str]:
    return re.compile("".join("(.*)" if part == "*" else re.escape(part) for part in re.split(r"(\*)", pattern)) + r"\Z",
                      re.DOTALL)


@dataclass(eq=False)
class WildcardEntry:
    """One model_list entry whose model_name is a pattern. `make(upstream, public_name, index)`
    builds a deployment's backend for a matched name; `template` is its litellm_params.model."""

    pattern: str
    template: str
    make: Callable[[str, str], Backend]
    id: str
    weight: float = 1.0
    rpm: int | None = None
    tpm: int | None = None
    input_cost_per_token: float | None = None
    output_cost_per_token: float | None = None
    regex: re.Pattern[str] = field(init=False)

    def __post_init__(self) -> None:
        self.regex = compile_pattern(self.pattern)

    @property
    def specificity(self) -> int:
        return len(self.pattern.replace("*", ""))

    def upstream(self, name: str) -> str | None:
        """The provider model for a requested `name`, or None when it does not match."""
        m = self.regex.match(name)
        if m is None:
            return None
        parts = iter(m.groups())
        out = re.sub(r"\*", lambda _: next(parts, ""), self.template)
        return out if "*" not in out else None


class Concrete:
    """Names matched by patterns -> their deployments, most recently used last, at most `limit`."""

    def __init__(self, limit: int = MAX_CONCRETE):
        self.limit = limit
        self.groups: OrderedDict[str, list] = OrderedDict()

    def get(self, name: str) -> list | None:
        group = self.groups.get(name)
        if group is not None:
            self.groups.move_to_end(name)
        return group

    def put(self, name: str, group: list) -> list:
        self.groups[name] = group
        while len(self.groups) > self.limit:
            self.groups.popitem(last=False)
        return group

    def clear(self) -> None:
        self.groups.clear()
