"""Which models a caller may use, from the `models` lists of its key, user and team, as LiteLLM
reads them:

- an empty list, or one holding `"*"`, restricts nothing;
- `"all-team-models"` in a key's list: the key may use whatever its team may (a key without a
  team gets nothing from it);
- an access group's name (`model_info.access_groups` of model_list entries and of models added
  through the API) stands for every model in that group;
- a pattern (`"openai/*"`) allows every name it matches;
- a model must be allowed by every list that restricts.

The answer is worked out when a key's record is loaded (its principal is cached), so a request
only looks the name up in a set; a change of the access groups drops the cached principals.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase

ALL = "*"
ALL_TEAM = "all-team-models"


def _allows(names: frozenset[str], model: str) -> bool:
    return model in names or any("*" in n and fnmatchcase(model, n) for n in names)


def _expand(names: Iterable[str], groups: Mapping[str, frozenset[str]]) -> frozenset[str]:
    out: set[str] = set()
    for name in names:
        out |= groups.get(name, frozenset((name,)))
    return frozenset(out)


def allowed_models(lists: Iterable[list[str] | frozenset[str] | None], groups: Mapping[str, frozenset[str]], *,
                   key: list[str] | frozenset[str] | None = None, has_team: bool = False) -> frozenset[str] | None:
    """The names (and patterns) allowed by every restricting list; None when none restricts.
    `key` is the key's own list (where `all-team-models` means "the team's")."""
    restricting: list[frozenset[str]] = []
    if key:
        if ALL_TEAM in key:
            rest = [n for n in key if n != ALL_TEAM]
            if not has_team:
                restricting.append(_expand(rest, groups))
            # with a team, the team's list (among `lists`) restricts; the key's other names add nothing
        elif ALL not in key:
            restricting.append(_expand(key, groups))
    for names in lists:
        if names and ALL not in names:
            restricting.append(_expand(names, groups))
    if not restricting:
        return None
    result = restricting[0]
    for other in restricting[1:]:
        result = frozenset(n for n in result if _allows(other, n)) | frozenset(n for n in other if _allows(result, n))
    return result


def patterns(models: frozenset[str] | None) -> tuple[str, ...]:
    return tuple(sorted(n for n in models if "*" in n)) if models else ()
