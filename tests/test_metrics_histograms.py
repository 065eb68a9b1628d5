"""The request histograms of GET /metrics are counted by proxy/observe/metrics.py itself (a bucket
count and a sum per label child) and added to prometheus-client when synced: what that exposes must
be what prometheus-client's own `observe` of the same values would have, bucket by bucket."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from proxy.observe.metrics import LATENCY_BUCKETS, TTFT_BUCKETS, _Observed


def exposed(registry: CollectorRegistry) -> dict[tuple, float]:
    """Every sample but the creation times: {(name, labels): value}."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(generate_latest(registry).decode())
            for s in family.samples if not s.name.endswith("_created")}


@pytest.mark.parametrize("bounds", [LATENCY_BUCKETS, TTFT_BUCKETS])
def test_synced_observations_expose_as_observed(bounds):
    rng = random.Random(7)
    values = [0.0, -1.0, *bounds, *(b * 1.0001 for b in bounds), 1e9] + [rng.expovariate(1 / b) for b in bounds * 20]
    rng.shuffle(values)
    registries = CollectorRegistry(), CollectorRegistry()
    reference, ours = (Histogram("h", "a histogram", ["route"], buckets=bounds, registry=r) for r in registries)
    observed = {route: _Observed(ours.labels(route), bounds) for route in ("a", "b")}
    for i, value in enumerate(values):
        route = "ab"[i % 2]
        reference.labels(route).observe(value)
        observed[route].observe(value)
        if i % 97 == 0:  # synced now and then, as scrapes and the workers' ticker do
            observed[route].sync()
    for o in observed.values():
        o.sync()
        o.sync()  # nothing new: adds nothing
    want, got = (exposed(r) for r in registries)
    assert got.keys() == want.keys()
    for sample, value in want.items():
        assert got[sample] == pytest.approx(value, rel=1e-12), sample
    assert want[("h_count", (("route", "a"),))] == len(values[::2])
