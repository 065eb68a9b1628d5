"""Observability made from the usage records the core submits (its one observer hook,
`Gateway.observe`): Prometheus metrics (always; GET /metrics), JSON request logs (`log_requests`,
on by default) and OpenTelemetry traces (only when OTEL_EXPORTER_OTLP_ENDPOINT is set)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from backends.router import Router

from ..domain import UsageRecord
from ..settings import ConfigError, KeystileSettings
from .logs import RequestLog
from .metrics import Metrics

if TYPE_CHECKING:
    from ..accounting.writer import UsageWriter
    from ..core.gateway import Call, Gateway
    from .traces import Tracer

log = logging.getLogger("keystile")
Observer = Callable[[UsageRecord, "Call"], None]


class Observers:
    def __init__(self, metrics: Metrics, log: RequestLog | None, tracer: Tracer | None):
        self.metrics = metrics
        self.log = log
        self.tracer = tracer

    @classmethod
    def start(cls, gateway: Gateway, router: Router, usage: UsageWriter, options: KeystileSettings,
              *, traces: bool) -> Observers:
        """Observers of `gateway`'s records as `options` ask (logs) and `traces` says (the OTLP
        endpoint is set)."""
        metrics = Metrics(router, gateway, usage)
        metrics.start()
        tracer = None
        if traces:
            try:
                from .traces import Tracer  # the SDK is loaded only when traces are wanted
            except ImportError as exc:
                raise ConfigError(f"OTEL_EXPORTER_OTLP_ENDPOINT is set but the OpenTelemetry SDK is missing ({exc}): "
                                  "pip install 'keystile[otel]'") from exc
            tracer = Tracer(router)
        request_log = RequestLog(log_prompts=options.log_prompts) if options.log_requests else None
        parts = [p for p in (metrics, request_log, tracer) if p is not None]
        gateway.observe = _each(tuple(parts))
        return cls(metrics, request_log, tracer)

    async def aclose(self) -> None:
        if self.log is not None:
            self.log.flush()
        await self.metrics.aclose()
        if self.tracer is not None:
            await self.tracer.aclose()


def _each(parts: tuple[Observer, ...]) -> Observer:
    """One observer calling `parts` in turn; a part that fails is logged (once per part) and never
    fails the request whose record it was given."""
    failed: set[int] = set()

    def observe(rec: UsageRecord, call: Call) -> None:
        for i, part in enumerate(parts):
            try:
                part(rec, call)
            except Exception:
                if i not in failed:
                    failed.add(i)
                    log.exception("observer %s failed (logged once)", type(part).__name__)
    return observe
