"""OpenTelemetry traces, opt-in by OTEL_EXPORTER_OTLP_ENDPOINT: a real OTLP/HTTP collector (protobuf,
as the SDK's exporter sends it) started by the test receives one SERVER span per request with the
gen_ai attributes and a CLIENT child for the upstream call; a request continues the W3C trace its
client sent, and the upstream (the fake's recorded headers) gets the CLIENT span's traceparent;
without the variable the SDK is never imported and no trace context is sent on."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .conftest import relay_config
from .servers import Keystile
from .upstream import Served, free_port

SERVER, CLIENT = 2, 3  # Span.SpanKind
TRACE_ID, PARENT_ID = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"  # the client's (W3C's example)
SENT = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "tracestate": "congo=t61rcWkgMzE"}


def _value(v) -> object:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


class Collector(Served):
    """Receives OTLP/HTTP protobuf exports on /v1/traces and keeps every span as a dict."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.spans: list[dict] = []
        self.lock = threading.Lock()
        self.serve(Starlette(routes=[Route("/v1/traces", self.traces, methods=["POST"])]))

    async def traces(self, request: Request) -> Response:
        assert request.headers["content-type"] == "application/x-protobuf"
        export = ExportTraceServiceRequest.FromString(await request.body())
        with self.lock:
            for resource in export.resource_spans:
                service = {a.key: _value(a.value) for a in resource.resource.attributes}.get("service.name")
                for scope in resource.scope_spans:
                    for s in scope.spans:
                        self.spans.append({
                            "name": s.name, "kind": s.kind, "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
                            "parent": s.parent_span_id.hex(), "start": s.start_time_unix_nano,
                            "end": s.end_time_unix_nano, "status": s.status.code, "service": service,
                            "attrs": {a.key: _value(a.value) for a in s.attributes}})
        return Response(ExportTraceServiceResponse().SerializeToString(), media_type="application/x-protobuf")

    def wait_for(self, n: int, timeout: float = 20) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.spans) >= n:
                    return list(self.spans)
            time.sleep(0.1)
        raise AssertionError(f"{len(self.spans)} spans arrived, wanted {n}: {self.spans}")


def test_spans_arrive_with_gen_ai_attributes(tmp_path, upstream):
    with Collector() as collector, Keystile(tmp_path, relay_config(upstream), env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=server.master_key, max_retries=0)
        answer = client.chat.completions.with_raw_response.create(
            model="echo", messages=[{"role": "user", "content": "one two three"}], max_tokens=20, temperature=0.5)
        request_id = answer.headers["x-request-id"]
        list(client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "a b"}], stream=True))
        spans = collector.wait_for(4)

    servers = [s for s in spans if s["kind"] == SERVER]
    clients = [s for s in spans if s["kind"] == CLIENT]
    assert len(servers) == 2 and len(clients) == 2
    first = next(s for s in servers if s["attrs"]["keystile.request_id"] == request_id)
    assert first["name"] == "chat echo" and first["service"] == "keystile"
    a = first["attrs"]
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.system"] == "openai"
    assert a["gen_ai.request.model"] == "echo"
    assert a["gen_ai.response.model"] == "echo-upstream"
    assert a["gen_ai.request.max_tokens"] == 20 and a["gen_ai.request.temperature"] == 0.5
    assert a["gen_ai.usage.input_tokens"] > 0 and a["gen_ai.usage.output_tokens"] > 0
    assert a["http.response.status_code"] == 200 and a["keystile.deployment"] == "echo-0"
    child = next(s for s in clients if s["parent"] == first["span_id"])
    assert child["trace_id"] == first["trace_id"] and child["name"] == "chat echo-upstream"
    assert first["start"] <= child["start"] <= child["end"] <= first["end"]
    assert child["attrs"]["gen_ai.usage.output_tokens"] == a["gen_ai.usage.output_tokens"]
    streamed = next(s for s in servers if s is not first)
    assert streamed["attrs"]["keystile.streamed"] is True and "keystile.time_to_first_token_ms" in streamed["attrs"]


def _upstream_headers(upstream, text: str) -> dict:
    """The headers of the (one) request the fake upstream got for a chat whose message is `text`."""
    found = [h for r, h in zip(upstream.requests, upstream.headers)
             if r.get("messages", [{}])[0].get("content") == text]
    assert len(found) == 1, found
    return found[0]


def _parent(headers: dict) -> tuple[str, str]:
    """The trace id and span id of the `traceparent` in `headers` (version 00, sampled)."""
    version, trace_id, span_id, flags = headers["traceparent"].split("-")
    assert version == "00" and int(flags, 16) & 1, headers["traceparent"]
    return trace_id, span_id


def test_requests_continue_the_trace_their_client_sent(tmp_path, upstream, fake_anthropic):
    config = relay_config(upstream)
    config["model_list"].append({"model_name": "claude", "litellm_params": {
        "model": "anthropic/claude-ok-sonnet", "api_base": fake_anthropic.base_url, "api_key": "anthropic-secret"}})
    with Collector() as collector, Keystile(tmp_path, config, env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=server.master_key, max_retries=0)
        answer = client.chat.completions.with_raw_response.create(
            model="echo", messages=[{"role": "user", "content": "traced call"}], extra_headers=SENT)
        list(client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "traced stream"}],
                                            stream=True, extra_headers=SENT))
        with pytest.raises(openai.NotFoundError):  # refused before admission: a SERVER span alone
            client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}],
                                           extra_headers=SENT)
        malformed = client.chat.completions.with_raw_response.create(
            model="echo", messages=[{"role": "user", "content": "malformed parent"}],
            extra_headers={"traceparent": f"00-{TRACE_ID}-nothex-01", "tracestate": "congo=t61rcWkgMzE"})
        assert malformed.status_code == 200
        relayed = httpx.post(server.url + "/v1/messages", headers={
            "x-api-key": server.master_key, "anthropic-version": "2023-06-01", **SENT}, json={
            "model": "claude", "max_tokens": 10, "messages": [{"role": "user", "content": "traced relay"}]})
        assert relayed.status_code == 200, relayed.text
        spans = collector.wait_for(9)

    def server_of(request_id: str) -> dict:
        return next(s for s in spans if s["kind"] == SERVER and s["attrs"]["keystile.request_id"] == request_id)

    def child_of(span: dict) -> dict:
        return next(s for s in spans if s["kind"] == CLIENT and s["parent"] == span["span_id"])

    continued = [s for s in spans if s["kind"] == SERVER and s["trace_id"] == TRACE_ID]
    assert len(continued) == 4 and all(s["parent"] == PARENT_ID for s in continued)
    assert {s["attrs"]["http.response.status_code"] for s in continued} == {200, 404}
    for span in continued:
        if span["attrs"]["http.response.status_code"] == 404:
            assert not [s for s in spans if s["parent"] == span["span_id"]]
        else:
            assert child_of(span)["trace_id"] == TRACE_ID

    # The upstream gets the CLIENT span's context: the client's trace, the gateway's span, its flags and tracestate.
    call = server_of(answer.headers["x-request-id"])
    sent_on = _upstream_headers(upstream, "traced call")
    assert sent_on["traceparent"] == f"00-{TRACE_ID}-{child_of(call)['span_id']}-01"  # the client's flags
    assert sent_on["tracestate"] == SENT["tracestate"]
    streamed = next(s for s in continued if s["attrs"]["keystile.streamed"])
    assert _parent(_upstream_headers(upstream, "traced stream")) == (TRACE_ID, child_of(streamed)["span_id"])

    # A malformed traceparent starts a new trace (its tracestate goes with it) and the request is served.
    fresh = server_of(malformed.headers["x-request-id"])
    assert fresh["trace_id"] != TRACE_ID and int(fresh["trace_id"], 16) != 0 and fresh["parent"] == ""
    sent_on = _upstream_headers(upstream, "malformed parent")
    assert _parent(sent_on) == (fresh["trace_id"], child_of(fresh)["span_id"])
    assert "tracestate" not in sent_on

    # The Anthropic relay's upstream too.
    anthropic_call = server_of(relayed.headers["x-request-id"])
    sent_on = next(h for r, h in zip(fake_anthropic.requests, fake_anthropic.headers)
                   if r["messages"][0]["content"] == "traced relay")
    assert sent_on["traceparent"] == f"00-{TRACE_ID}-{child_of(anthropic_call)['span_id']}-01"


def test_without_traces_no_trace_context_is_sent_on(relay, upstream):
    client = openai.OpenAI(base_url=relay.url + "/v1", api_key=relay.master_key, max_retries=0)
    client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "untraced call"}],
                                   extra_headers=SENT)
    sent_on = _upstream_headers(upstream, "untraced call")
    assert "traceparent" not in sent_on and "tracestate" not in sent_on


def test_without_the_endpoint_the_sdk_is_not_loaded(tmp_path, upstream):
    """The app started and stopped in a process of its own: neither the tracing SDK nor the exporter
    loaded (redis-py loads OpenTelemetry's metrics SDK by itself where it is installed)."""
    import yaml

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(relay_config(upstream)))
    script = (
        "import asyncio, sys\n"
        "from proxy.app import create_app\n"
        "from proxy.db.migrate import upgrade\n"
        "from proxy.settings import Settings\n"
        "upgrade(Settings().database_url, 'head')\n"
        "app = create_app()\n"
        "async def main():\n"
        "    async with app.router.lifespan_context(app):\n"
        "        assert app.state.services.observers.tracer is None\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk.trace', 'opentelemetry.exporter',\n"
        "                                                  'proxy.observe.traces'))))\n")
    env = {"KEYSTILE_CONFIG": str(config), "KEYSTILE_MASTER_KEY": "sk-master-for-this-test",
           "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/k.db", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
