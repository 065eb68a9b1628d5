"""OpenTelemetry traces, made when OTEL_EXPORTER_OTLP_ENDPOINT is set (this module, and so the
OpenTelemetry SDK, is imported only then): one SERVER span per request with the gen_ai semantic
conventions' attributes, and a CLIENT child span for the call to the upstream, exported in batches
over OTLP/HTTP (protobuf) by a background thread of the SDK.

The spans are made from the request's usage record when the core submits it, with the times the
call took (start, end of admission, end), so the hot path gains no per-request work until then.
The SDK's own environment variables apply (OTEL_SERVICE_NAME, OTEL_EXPORTER_OTLP_HEADERS,
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_TRACES_SAMPLER, ...)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context

from backends.router import Router

from ..domain import UsageRecord

if TYPE_CHECKING:
    from ..core.gateway import Call

OPERATIONS = (("/chat/completions", "chat"), ("/messages", "chat"), ("/responses", "chat"),
              ("/embeddings", "embeddings"), ("/completions", "text_completion"), ("/rerank", "rerank"))
REQUEST_PARAMS = (("max_tokens", "gen_ai.request.max_tokens"), ("temperature", "gen_ai.request.temperature"),
                  ("top_p", "gen_ai.request.top_p"), ("top_k", "gen_ai.request.top_k"),
                  ("frequency_penalty", "gen_ai.request.frequency_penalty"),
                  ("presence_penalty", "gen_ai.request.presence_penalty"), ("seed", "gen_ai.request.seed"))


def operation_of(route: str) -> str:
    """The gen_ai.operation.name of a route."""
    return next((op for suffix, op in OPERATIONS if route.endswith(suffix)), "chat")


class Tracer:
    def __init__(self, router: Router):
        self._router = router
        self.provider = TracerProvider(resource=Resource.create({"service.name": "keystile"}))
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self._tracer = self.provider.get_tracer("keystile")

    def __call__(self, rec: UsageRecord, call: Call) -> None:
        end = time.time_ns()
        start = end - int(rec.latency_ms * 1e6)
        op = operation_of(rec.route)
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": op, "gen_ai.request.model": rec.model, "http.route": rec.route,
            "http.response.status_code": rec.status, "keystile.request_id": rec.request_id,
            "gen_ai.response.id": rec.request_id, "gen_ai.usage.input_tokens": rec.prompt_tokens,
            "gen_ai.usage.output_tokens": rec.completion_tokens, "keystile.cost_usd": rec.cost,
            "keystile.streamed": rec.streamed,
        }
        body = call.body or {}
        for name, attr in REQUEST_PARAMS:
            value = body.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                attrs[attr] = value
        d = call.deployment
        if d is not None:
            system, _, upstream_model = d.upstream.partition("/")
            attrs.update({"gen_ai.system": system, "gen_ai.provider.name": system,
                          "gen_ai.response.model": upstream_model or d.upstream, "keystile.deployment": d.id})
        if rec.ttft_ms is not None:
            attrs["keystile.time_to_first_token_ms"] = rec.ttft_ms
        if rec.error_type:
            attrs["error.type"] = rec.error_type
        span = self._tracer.start_span(f"{op} {rec.model}", kind=SpanKind.SERVER, start_time=start, attributes=attrs)
        if rec.status >= 500:
            span.set_status(Status(StatusCode.ERROR, rec.error_type))
        if call.admitted is not None:
            self._upstream(span, call, rec, attrs, start + int((call.admitted - call.started) * 1e9), end)
        span.end(end_time=end)

    def _upstream(self, parent: Any, call: Call, rec: UsageRecord, attrs: dict[str, Any], start: int, end: int) -> None:
        """The child span of the upstream call: from the end of admission to the end of the call."""
        child_attrs = {k: v for k, v in attrs.items() if k.startswith("gen_ai.") or k == "error.type"}
        d = call.deployment
        if d is not None:
            child_attrs["keystile.deployment"] = d.id
        name = f"{child_attrs['gen_ai.operation.name']} {child_attrs.get('gen_ai.response.model', rec.model)}"
        child = self._tracer.start_span(name, context=set_span_in_context(parent), kind=SpanKind.CLIENT,
                                        start_time=start, attributes=child_attrs)
        if rec.status >= 500 or d is None:
            child.set_status(Status(StatusCode.ERROR, rec.error_type))
        child.end(end_time=end)

    async def aclose(self) -> None:
        """Send what is batched (the SDK blocks while it does: off the event loop)."""
        await asyncio.to_thread(self.provider.shutdown)
