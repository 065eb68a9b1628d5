"""Wildcard entries in the router (backends/wildcards.py) and the access rules of `models` lists
(proxy/models/access.py), without a server: which entry serves a name, with which upstream model,
how many matched names are kept, and what a key, user and team may use together."""

from __future__ import annotations

import pytest

from backends import errors
from backends.base import Remote
from backends.router import Deployment, Router, RouterPolicy
from backends.wildcards import WildcardEntry
from proxy.models.access import allowed_models, patterns


class Named(Remote):
    def __init__(self, upstream: str):
        self.upstream = upstream


def entry(pattern: str, template: str, ident: str) -> WildcardEntry:
    return WildcardEntry(pattern=pattern, template=template, make=lambda upstream, _: Named(upstream), id=ident)


def router(*entries: WildcardEntry) -> Router:
    exact = Deployment(model_name="openai/gpt-4o", id="exact", backend=Named("openai/exact"), upstream="openai/exact")
    return Router([exact], RouterPolicy(num_retries=0), wildcards=list(entries))


def test_the_most_specific_pattern_serves_and_stars_carry_over():
    r = router(entry("*", "hosted_vllm/*", "any"), entry("openai/*", "openai/*", "oai"),
               entry("fo::*:static::*", "openai/fo::*:static::*", "multi"))
    assert [d.upstream for d in r.attempts("openai/gpt-4o-mini")] == ["openai/gpt-4o-mini"]
    assert [d.upstream for d in r.attempts("llama-3")] == ["hosted_vllm/llama-3"]
    assert [d.upstream for d in r.attempts("fo::hi:static::there")] == ["openai/fo::hi:static::there"]
    assert [d.id for d in r.attempts("openai/gpt-4o")] == ["exact"]  # exact names win
    assert r.attempts("openai/gpt-4o-mini")[0] is r.attempts("openai/gpt-4o-mini")[0]  # made once
    assert "openai/*" in r.names() and "*" in r.names()


def test_equally_specific_entries_share_a_name_and_no_match_is_not_served():
    r = router(entry("openai/*", "openai/*", "a"), entry("openai/*", "azure/*", "b"))
    assert {d.upstream for d in r.group("openai/o1")} == {"openai/o1", "azure/o1"}
    assert "anthropic/claude" not in r and r.group("anthropic/claude") is None


def test_matched_names_are_bounded_and_a_removed_model_is_refused():
    wild = entry("*", "openai/*", "any")
    r = router(wild)
    r._matched.limit = 3
    for i in range(10):
        assert f"m{i}" in r
    assert len(r._matched.groups) == 3
    r.remove_wildcard(wild)
    assert "m9" not in r
    with pytest.raises(errors.ModelRemoved):
        r.attempts("m9")


GROUPS = {"beta": frozenset({"gpt-4", "llama"}), "prod": frozenset({"gpt-4o"})}


@pytest.mark.parametrize("key, user, team, has_team, allowed, refused", [
    (["*"], None, None, False, None, []),
    (["all-team-models"], None, ["gpt-4"], True, {"gpt-4"}, ["llama"]),
    (["all-team-models"], None, None, False, set(), ["gpt-4"]),
    (["beta"], None, ["gpt-4", "gpt-4o"], True, {"gpt-4"}, ["llama", "gpt-4o"]),
    (["openai/*"], None, ["openai/gpt-4o", "claude"], True, {"openai/gpt-4o"}, ["claude"]),
    (["openai/*"], None, None, False, {"openai/*"}, ["claude"]),
    ([], ["prod"], ["*"], True, {"gpt-4o"}, ["gpt-4"]),
])
def test_models_lists(key, user, team, has_team, allowed, refused):
    got = allowed_models((user, team), GROUPS, key=key, has_team=has_team)
    assert got == (None if allowed is None else frozenset(allowed))
    assert patterns(got) == tuple(sorted(n for n in (allowed or ()) if "*" in n))
    for name in refused:
        assert got is not None and name not in got
