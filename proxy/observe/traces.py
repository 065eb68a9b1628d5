"""OpenTelemetry traces, made when OTEL_EXPORTER_OTLP_ENDPOINT is set (this module, and so the
OpenTelemetry SDK, is imported only then): one SERVER span per request with the gen_ai semantic
conventions' attributes, and a CLIENT child span for the call to the upstream, exported in batches
over OTLP/HTTP (protobuf) by a background thread of the SDK.

A request continues the trace its client sent in W3C `traceparent` (and `tracestate`): its SERVER
span is a child of that span (`ContinueTraces`, around the edge); a malformed or absent traceparent
starts a new trace. The spans start when the call's admission ends (`Tracer.admitted`), so that the
upstream requests it makes carry the CLIENT span's `traceparent` (and the client's `tracestate`) on
(`ClientPool.send_context_headers`: OpenAI-compatible and Anthropic HTTP upstreams). A call refused
before that gets its SERVER span from its usage record. Attributes, names and ends come from the
usage record when the core submits it. None of this exists when traces are off: no header is read.
The SDK's own environment variables apply (OTEL_SERVICE_NAME, OTEL_EXPORTER_OTLP_HEADERS,
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_TRACES_SAMPLER, ...); propagation is W3C trace context
only (no baggage is taken from clients nor sent to upstreams)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from opentelemetry.context import attach, detach
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import ASGIApp, Receive, Scope, Send

from backends.router import Router

from ..domain import UsageRecord

if TYPE_CHECKING:
    from backends.http import ClientPool

    from ..core.gateway import Call, Gateway

OPERATIONS = (("/chat/completions", "chat"), ("/messages", "chat"), ("/responses", "chat"),
              ("/embeddings", "embeddings"), ("/completions", "text_completion"), ("/rerank", "rerank"))
REQUEST_PARAMS = (("max_tokens", "gen_ai.request.max_tokens"), ("temperature", "gen_ai.request.temperature"),
                  ("top_p", "gen_ai.request.top_p"), ("top_k", "gen_ai.request.top_k"),
                  ("frequency_penalty", "gen_ai.request.frequency_penalty"),
                  ("presence_penalty", "gen_ai.request.presence_penalty"), ("seed", "gen_ai.request.seed"))


def operation_of(route: str) -> str:
    """The gen_ai.operation.name of a route."""
    return next((op for suffix, op in OPERATIONS if route.endswith(suffix)), "chat")


class _ASGIHeaders(Getter[Iterable[tuple[bytes, bytes]]]):
    """An ASGI scope's headers (lower-case names) for OpenTelemetry's propagators."""

    def get(self, carrier: Iterable[tuple[bytes, bytes]], key: str) -> list[str] | None:
        name = key.lower().encode("latin-1")
        return [value.decode("latin-1") for n, value in carrier if n == name] or None

    def keys(self, carrier: Iterable[tuple[bytes, bytes]]) -> list[str]:
        return [n.decode("latin-1") for n, _ in carrier]


class ContinueTraces:
    """ASGI around the edge: each HTTP request runs in the trace context its client sent (W3C
    `traceparent`/`tracestate`; nothing, or nothing valid, is an empty context), the parent of the
    spans made for it."""

    def __init__(self, app: ASGIApp):
        self.app = app
        self._propagator = TraceContextTextMapPropagator()
        self._headers = _ASGIHeaders()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = attach(self._propagator.extract(scope["headers"], getter=self._headers))
        try:
            await self.app(scope, receive, send)
        finally:
            detach(token)


class Tracer:
    def __init__(self, router: Router):
        self._router = router
        self.provider = TracerProvider(resource=Resource.create({"service.name": "keystile"}))
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self._tracer = self.provider.get_tracer("keystile")
        self._propagator = TraceContextTextMapPropagator()
        # The header lines of the current call's CLIENT span (traceparent, tracestate), set in the
        # task that makes the call's upstream requests.
        self._upstream: ContextVar[bytes | None] = ContextVar("keystile_upstream_trace", default=None)

    def follow(self, gateway: Gateway, pool: ClientPool) -> None:
        """Start each call's spans as its admission ends, and send its CLIENT span's context on with
        the upstream requests it makes through `pool`."""
        gateway.on_admitted = self.admitted
        pool.send_context_headers(self._upstream.get)

    def admitted(self, call: Call) -> None:
        """`call`'s SERVER span (from the call's start, a child of the context its client sent) and
        its CLIENT child (from now, the end of admission), whose context the upstream requests made
        from here on in this task carry. Named and ended from the usage record (`__call__`)."""
        now = time.time_ns()
        op = operation_of(call.route)
        server = self._tracer.start_span(f"{op} {call.model}", kind=SpanKind.SERVER,
                                         start_time=now - int((time.perf_counter() - call.started) * 1e9))
        client = self._tracer.start_span(op, context=set_span_in_context(server), kind=SpanKind.CLIENT, start_time=now)
        call.spans = (server, client)
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=set_span_in_context(client))
        self._upstream.set("".join(f"{k}: {v}\r\n" for k, v in carrier.items()).encode("latin-1"))

    def __call__(self, rec: UsageRecord, call: Call) -> None:
        end = time.time_ns()
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
        name = f"{op} {rec.model}"
        if isinstance(call.spans, tuple):  # admitted: started by `admitted`
            span, child = call.spans
            span.update_name(name)
            span.set_attributes(attrs)
            self._upstream_end(child, call, rec, attrs, end)
        else:  # refused before admission: a child of the client's context (ContinueTraces)
            span = self._tracer.start_span(name, kind=SpanKind.SERVER, start_time=end - int(rec.latency_ms * 1e6),
                                           attributes=attrs)
        if rec.status >= 500:
            span.set_status(Status(StatusCode.ERROR, rec.error_type))
        span.end(end_time=end)

    def _upstream_end(self, child: Span, call: Call, rec: UsageRecord, attrs: dict[str, Any], end: int) -> None:
        """The CLIENT span of the upstream call, from the end of admission to the end of the call."""
        child_attrs = {k: v for k, v in attrs.items() if k.startswith("gen_ai.") or k == "error.type"}
        d = call.deployment
        if d is not None:
            child_attrs["keystile.deployment"] = d.id
        child.update_name(f"{attrs['gen_ai.operation.name']} {attrs.get('gen_ai.response.model', rec.model)}")
        child.set_attributes(child_attrs)
        if rec.status >= 500 or d is None:
            child.set_status(Status(StatusCode.ERROR, rec.error_type))
        child.end(end_time=end)

    async def aclose(self) -> None:
        """Send what is batched (the SDK blocks while it does: off the event loop)."""
        await asyncio.to_thread(self.provider.shutdown)
