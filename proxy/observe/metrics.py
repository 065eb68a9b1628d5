"""Prometheus metrics (GET /metrics), fed from two places and nothing else:

- each usage record as the core submits it (`Metrics.__call__`, the gateway's observer): requests by
  route, model, deployment and status, latency and time to first token, tokens, spend, limit
  refusals by kind. A record costs a dict lookup, a few additions and a bisection per histogram:
  its counts and its histograms' buckets and sums are kept here and go to prometheus-client when
  synced (a label child's `inc` or `observe` takes a lock and a few calls; per record they cost
  more than everything else here).
- state the gateway keeps anyway, read when scraped (`sync`, which also adds the records' counts
  since the last sync to the counters): calls and streams in flight, upstream
  requests in flight, retriable upstream errors and cooldowns per deployment (counted by the
  router), the usage buffer's depth and its oldest record's age.

Several worker processes (`keystile serve --workers N`) share one set of figures through
prometheus-client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by `serve`): counters and
histograms add up over the workers, gauges are summed over live workers (the oldest record's age:
their maximum), and each worker syncs its counts and gauges every second since any one of them may
answer a scrape (another worker's figures may be up to a second old). Several hosts: each instance is scraped on its own, as Prometheus does."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from bisect import bisect_left
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

from backends.router import Router

from ..domain import UsageRecord

if TYPE_CHECKING:
    from ..accounting.writer import UsageWriter
    from ..core.gateway import Call, Gateway

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
MAX_SERIES = 2000
"""Label combinations kept apart; beyond them a new route's and model's labels read "other" (a
route's path may carry a caller's ids)."""
SYNC_INTERVAL_S = 1.0


class _Observed:
    """Observations of a histogram's label child not yet added to it: a count per bucket (the
    last one +Inf) and their sum."""

    __slots__ = ("child", "bounds", "counts", "sum")

    def __init__(self, child: Histogram, bounds: tuple[float, ...]):
        self.child = child
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """What `Histogram.observe` does, without its lock: the first bucket whose bound is >= value."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def sync(self) -> None:
        """The observations so far added to the child. prometheus-client has no public call that adds
        n observations to a bucket: this adds to the values `observe` adds to (its `_buckets`, one a
        bound and +Inf, and `_sum`; in multiprocess mode the worker's mmapped values), which its
        exposition reads. tests/test_metrics_histograms.py holds it to `observe`'s exposition."""
        counts = self.counts
        if not any(counts):
            return
        buckets = self.child._buckets  # type: ignore[attr-defined]
        for i, n in enumerate(counts):
            if n:
                buckets[i].inc(n)
                counts[i] = 0
        self.child._sum.inc(self.sum)  # type: ignore[attr-defined]
        self.sum = 0.0


class _Series:
    """One (route, model, deployment, status): its histograms' observations and its counts
    (requests, prompt tokens, completion tokens, spend) so far and as last synced into its
    counter children (label children looked up once)."""

    __slots__ = ("latency", "ttft", "counts", "synced", "counters")

    def __init__(self, m: Metrics, route: str, model: str, deployment: str, status: str):
        self.latency = _Observed(m.latency.labels(route, model), LATENCY_BUCKETS)
        self.ttft = _Observed(m.ttft.labels(model, deployment), TTFT_BUCKETS)
        self.counts: list[float] = [0, 0, 0, 0.0]
        self.synced: list[float] = [0, 0, 0, 0.0]
        self.counters = (m.requests.labels(route, model, deployment, status),
                         m.tokens.labels(model, deployment, "prompt"),
                         m.tokens.labels(model, deployment, "completion"), m.spend.labels(model, deployment))

    def sync(self) -> None:
        counts, synced = self.counts, self.synced
        for i, counter in enumerate(self.counters):
            if counts[i] != synced[i]:
                counter.inc(counts[i] - synced[i])
                synced[i] = counts[i]
        self.latency.sync()
        self.ttft.sync()


class Metrics:
    def __init__(self, router: Router, gateway: Gateway, usage: UsageWriter):
        self._router = router
        self._gateway = gateway
        self._usage = usage
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        r = self.registry = CollectorRegistry()
        self.requests = Counter("keystile_requests", "Requests by route, model, deployment and status",
                                ["route", "model", "deployment", "status"], registry=r)
        self.latency = Histogram("keystile_request_duration_seconds", "Time to the last byte",
                                 ["route", "model"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("keystile_time_to_first_token_seconds", "Streams: time to the first chunk",
                              ["model", "deployment"], buckets=TTFT_BUCKETS, registry=r)
        self.tokens = Counter("keystile_tokens", "Tokens used", ["model", "deployment", "type"], registry=r)
        self.spend = Counter("keystile_spend_usd", "Spend in USD", ["model", "deployment"], registry=r)
        self.refusals = Counter("keystile_limit_refusals", "Requests refused by a rate limit or budget",
                                ["kind", "scope"], registry=r)
        self.upstream_errors = Counter("keystile_upstream_errors",
                                       "Retriable upstream failures (5xx, 429, timeouts, connection errors)",
                                       ["deployment", "model"], registry=r)
        self.cooldowns = Counter("keystile_deployment_cooldowns", "Cooldowns started by this gateway",
                                 ["deployment", "model"], registry=r)
        self.cooling = Gauge("keystile_deployment_cooling_down", "1 while a deployment is cooling down",
                             ["deployment", "model"], registry=r, multiprocess_mode="livemax")
        self.upstream_in_flight = Gauge("keystile_upstream_requests_in_flight", "Upstream requests in flight",
                                        ["deployment", "model"], registry=r, multiprocess_mode="livesum")
        self.in_flight = Gauge("keystile_requests_in_flight", "Inference requests in flight", registry=r,
                               multiprocess_mode="livesum")
        self.streams = Gauge("keystile_streams_in_flight", "Streams in flight", registry=r,
                             multiprocess_mode="livesum")
        self.buffered = Gauge("keystile_usage_buffer_records", "Usage records waiting for the database",
                              registry=r, multiprocess_mode="livesum")
        self.oldest = Gauge("keystile_usage_oldest_unwritten_seconds",
                            "Age of the oldest usage record not yet in the database", registry=r,
                            multiprocess_mode="livemax")
        self.usage_dropped = Counter("keystile_usage_dropped_records", "Usage records dropped (buffer full, "
                                     "no journal)", registry=r)
        self._series: dict[tuple[str, str, str, int], _Series] = {}
        self._synced: dict[str, tuple[int, int]] = {}
        self._dropped = 0
        self._ticker: asyncio.Task[None] | None = None

    def __call__(self, rec: UsageRecord, call: Call) -> None:
        key = (rec.route, rec.model, rec.deployment or "", rec.status)
        s = self._series.get(key)
        if s is None:
            s = self._new_series(key)
        counts = s.counts
        counts[0] += 1
        counts[1] += rec.prompt_tokens
        counts[2] += rec.completion_tokens
        counts[3] += rec.cost
        s.latency.observe(rec.latency_ms / 1000)
        if rec.ttft_ms is not None:
            s.ttft.observe(rec.ttft_ms / 1000)
        if call.refused_by is not None:
            self.refusals.labels(*call.refused_by).inc()

    def _new_series(self, key: tuple[str, str, str, int]) -> _Series:
        """A new label combination's children; a model not served (the caller's text) reads "unknown",
        and past MAX_SERIES route and model read "other": such records find their series here each
        time, so what callers send cannot grow the table."""
        route, model, deployment, status = key
        if model not in self._router:
            model = "unknown"
        if len(self._series) >= MAX_SERIES:
            route, model = "other", "other"
        label = (route, model, deployment, status)
        s = self._series.get(label)
        if s is None:
            s = self._series[label] = _Series(self, route, model, deployment, str(status))
        return s

    def sync(self) -> None:
        """The records' counts and observations and the router's error and cooldown counts added
        since the last sync; gauges from the gateway's state."""
        for s in self._series.values():
            s.sync()
        g, usage = self._gateway, self._usage
        self.in_flight.set(g.calls_open)
        self.streams.set(g.streams_open)
        self.buffered.set(usage.pending)
        oldest = usage.oldest
        self.oldest.set(max(0.0, time.time() - oldest.created_at.timestamp()) if oldest is not None else 0.0)
        if usage.dropped > self._dropped:
            self.usage_dropped.inc(usage.dropped - self._dropped)
            self._dropped = usage.dropped
        now = time.monotonic()
        for d in self._router.deployments():
            labels = (d.id, d.model_name)
            errors, cooldowns = self._synced.get(d.id, (0, 0))
            self.upstream_errors.labels(*labels).inc(d.errors - errors)
            self.cooldowns.labels(*labels).inc(d.cooldowns - cooldowns)
            self._synced[d.id] = (d.errors, d.cooldowns)
            self.cooling.labels(*labels).set(1 if d.cooldown_until > now else 0)
            self.upstream_in_flight.labels(*labels).set(d.in_flight)

    def expose(self) -> bytes:
        """The text exposition format: this process's figures, or every worker's in multiprocess mode."""
        self.sync()
        if not self.multiprocess:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        return generate_latest(merged)

    def start(self) -> None:
        if self.multiprocess:
            self._ticker = asyncio.get_running_loop().create_task(self._tick(), name="keystile-metrics-sync")

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(SYNC_INTERVAL_S)
            self.sync()

    async def aclose(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self.multiprocess:
            multiprocess.mark_process_dead(os.getpid())  # this worker's live gauges leave the sums
