"""Metrics and request logs of a live server (proxy/observe): GET /metrics is guarded (master key,
admin key or the scrape token) and its counts add up to the requests sent — answered, refused by a
limit, failed upstream, streamed; the server's log has one JSON line per request with who, what
and how, never a key, and the prompt only with log_prompts."""

from __future__ import annotations

import asyncio
import json
import secrets
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import relay_config
from .servers import Keystile

TOKEN = "scrape-" + secrets.token_urlsafe(16)
PROMPT = "a very private prompt " + secrets.token_hex(4)


def scrape(url: str, token: str) -> dict[str, list[tuple[dict, float]]]:
    """Every sample of /metrics by sample name: [(labels, value)]."""
    r = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    out: dict[str, list[tuple[dict, float]]] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def total(samples: dict, name: str, **match) -> float:
    return sum(v for labels, v in samples.get(name, []) if all(labels.get(k) == w for k, w in match.items()))


def logged(server: Keystile, n: int, timeout: float = 5) -> list[dict]:
    """The server's request log lines once there are at least `n` (they are written within 0.2 s)."""
    deadline = time.monotonic() + timeout
    while len(lines := request_lines(server.logs())) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return lines


def request_lines(log: str) -> list[dict]:
    lines = []
    for line in log.splitlines():
        if line.startswith("{") and '"request_id"' in line:
            lines.append(json.loads(line))
    return lines


@pytest.fixture(scope="module")
def observed(tmp_path_factory, upstream):
    config = relay_config(upstream, metrics_token=TOKEN)
    with Keystile(tmp_path_factory.mktemp("observe"), config) as server:
        yield server


async def send_mix(url: str, master: str) -> dict[str, int]:
    """A mix of outcomes; returns how many of each status were sent."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        r = await c.post("/key/generate", json={"key_alias": "metered", "rpm_limit": 2},
                         headers={"Authorization": f"Bearer {master}"})
        limited = r.json()["key"]
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=master, max_retries=0)
    sent: dict[str, int] = {}

    def tally(status: int) -> None:
        sent[str(status)] = sent.get(str(status), 0) + 1

    msg = [{"role": "user", "content": PROMPT}]
    for _ in range(3):
        await client.chat.completions.create(model="echo", messages=msg)
        tally(200)
    for _ in range(2):
        stream = await client.chat.completions.create(model="echo", messages=msg, stream=True)
        assert [c async for c in stream]
        tally(200)
    for model, error in (("failing", openai.InternalServerError),  # 2 attempts (num_retries 1)
                         ("badreq", openai.BadRequestError), ("no-such-model", openai.NotFoundError)):
        with pytest.raises(error) as refused:
            await client.chat.completions.create(model=model, messages=msg)
        tally(refused.value.status_code)
    keyed = openai.AsyncOpenAI(base_url=url + "/v1", api_key=limited, max_retries=0)
    outcomes = await asyncio.gather(*(keyed.chat.completions.create(model="echo", messages=msg) for _ in range(4)),
                                    return_exceptions=True)
    assert sum(isinstance(o, openai.RateLimitError) for o in outcomes) == 2, outcomes
    for _ in range(2):
        tally(200)
        tally(429)
    return sent


def test_metrics_need_a_scraper(observed):
    url = observed.url + "/metrics"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong-token"}).status_code == 401
    r = httpx.post(observed.url + "/key/generate", json={}, headers={"Authorization": f"Bearer {observed.master_key}"})
    user_key = r.json()["key"]
    r = httpx.get(url, headers={"Authorization": f"Bearer {user_key}"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "admin_only"
    assert httpx.get(url, headers={"Authorization": f"Bearer {observed.master_key}"}).status_code == 200
    assert httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


async def test_metrics_add_up_to_the_requests_sent(observed):
    before = scrape(observed.url, TOKEN)
    lines_before = len(logged(observed, 0))
    sent = await send_mix(observed.url, observed.master_key)
    after = scrape(observed.url, TOKEN)

    def delta(name: str, **match) -> float:
        return total(after, name, **match) - total(before, name, **match)

    for status, n in sent.items():
        assert delta("keystile_requests_total", status=status) == n, status
    n = sum(sent.values())
    assert delta("keystile_requests_total") == n
    time.sleep(0.5)
    assert len(logged(observed, lines_before + n)) == lines_before + n  # one log line per request
    assert delta("keystile_requests_total", model="echo", deployment="echo-0", status="200") == 7
    assert delta("keystile_requests_total", model="unknown", status="404") == 1  # not the caller's text
    assert delta("keystile_request_duration_seconds_count") == n
    assert delta("keystile_request_duration_seconds_count", route="/v1/chat/completions", model="echo") == 9
    assert delta("keystile_time_to_first_token_seconds_count", model="echo") == 2  # the streams
    assert delta("keystile_tokens_total", model="echo", type="prompt") > 0
    assert delta("keystile_tokens_total", model="echo", type="completion") > 0
    assert delta("keystile_limit_refusals_total", kind="rpm", scope="key") == 2
    assert delta("keystile_upstream_errors_total", deployment="failing-1") == 2  # one request, two attempts
    assert delta("keystile_upstream_errors_total", deployment="badreq-2") == 0  # the upstream refused the body
    assert total(after, "keystile_requests_in_flight") == 0
    assert total(after, "keystile_streams_in_flight") == 0
    for name in ("keystile_usage_buffer_records", "keystile_usage_oldest_unwritten_seconds",
                 "keystile_deployment_cooling_down", "keystile_deployment_cooldowns_total",
                 "keystile_spend_usd_total", "keystile_upstream_requests_in_flight"):
        assert name in after, name


async def test_in_flight_while_streams_are_open(observed):
    """Gauges read the gateway's state when scraped: two slow streams open are two of each."""
    client = openai.AsyncOpenAI(base_url=observed.url + "/v1", api_key=observed.master_key, max_retries=0)
    streams = [await client.chat.completions.create(model="slow", messages=[{"role": "user", "content": "a b c d"}],
                                                    stream=True) for _ in range(2)]
    try:
        for s in streams:
            await anext(aiter(s))
        now = scrape(observed.url, TOKEN)
        assert total(now, "keystile_requests_in_flight") == 2
        assert total(now, "keystile_streams_in_flight") == 2
        assert total(now, "keystile_upstream_requests_in_flight", deployment="slow-5") == 2
    finally:
        for s in streams:
            await s.close()


def test_request_log_lines(observed):
    """One JSON line per request, with the key's display form, never the key or the prompt."""
    lines = logged(observed, 1)
    assert lines, observed.logs()[-2000:]
    by_status = {}
    for line in lines:
        by_status.setdefault(line["status"], []).append(line)
        for field in ("request_id", "key", "key_alias", "route", "model", "deployment", "status", "latency_ms",
                      "prompt_tokens", "completion_tokens", "cost", "error_type", "ttft_ms"):
            assert field in line, (field, line)
        assert "prompt" not in line
    ok = by_status[200][0]
    assert ok["key"] == "master" and ok["model"] == "echo" and ok["deployment"] == "echo-0"
    assert ok["completion_tokens"] > 0 and ok["latency_ms"] > 0
    metered = [line for line in lines if line["key_alias"] == "metered"]
    assert metered and all(line["key"].startswith("sk-...") and len(line["key"]) == 10 for line in metered)
    assert {line["error_type"] for line in by_status[429]} == {"rate_limit_error"}
    log = observed.logs()
    assert observed.master_key not in log and PROMPT not in log and TOKEN not in log


def test_prompts_are_logged_only_when_asked(tmp_path, upstream):
    with Keystile(tmp_path, relay_config(upstream), env={"KEYSTILE_LOG_PROMPTS": "true"}) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=server.master_key, max_retries=0)
        client.chat.completions.create(model="echo", messages=[{"role": "user", "content": PROMPT}])
        lines = logged(server, 1)
    assert len(lines) == 1
    assert lines[0]["prompt"] == {"messages": [{"role": "user", "content": PROMPT}]}
    assert server.master_key not in server.logs()


def test_request_logs_can_be_turned_off(tmp_path, upstream):
    with Keystile(tmp_path, relay_config(upstream, log_requests=False)) as server:
        openai.OpenAI(base_url=server.url + "/v1", api_key=server.master_key).chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "hi"}])
    assert request_lines(server.logs()) == []  # read after the server stopped (and flushed what it had)


def test_workers_metrics_add_up(tmp_path, upstream):
    """`--workers 2`: whichever worker answers a scrape, it counts every worker's requests
    (prometheus-client's multiprocess mode), and the in-flight gauges sum the live workers."""
    with Keystile(tmp_path, relay_config(upstream, metrics_token=TOKEN), args=("--workers", "2")) as server:
        for i in range(12):  # a new connection each: the workers take them as they come
            r = httpx.post(server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {server.master_key}"},
                           json={"model": "echo", "messages": [{"role": "user", "content": f"hi {i}"}],
                                 "stream": i % 2 == 0})
            assert r.status_code == 200
        time.sleep(1.5)  # each worker writes its gauges every second
        for _ in range(4):
            now = scrape(server.url, TOKEN)
            assert total(now, "keystile_requests_total", status="200") == 12
            assert total(now, "keystile_time_to_first_token_seconds_count") == 6
            assert total(now, "keystile_requests_in_flight") == 0
            assert "keystile_usage_buffer_records" in now
