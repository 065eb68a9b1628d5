"""The production stack over HTTPS (tests/stack.py): nginx -> two Keystile instances -> PostgreSQL +
Redis -> the fake upstream. TLS, redirects and headers; nginx's own refusals as OpenAI JSON; limits
and key blocks shared by both instances; client addresses believed only from nginx; streams relayed
chunk by chunk; an instance stopped or killed under load."""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
import subprocess
import time
import uuid

import httpx
import openai
import pytest

from .stack import Stack
from .test_limits_e2e import fresh_window

CHAT = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def upstreams_of(stack: Stack, request_ids: set[str]) -> list[str]:
    """The instance(s) nginx sent each of these requests to, from its access log."""
    found = []
    for line in stack.access_log():
        rid = line.rsplit(" id=", 1)[-1]
        if rid in request_ids:
            found.append(line.split(" upstream=", 1)[1].split(" upstream_status=", 1)[0])
    return found


def test_https_http2_hsts_redirect_and_request_id(stack: Stack):
    curl = ["curl", "-sS", "--cacert", stack.ca, "-o", "/dev/null", "-D", "-", "-w", "%{http_version}\n"]
    done = subprocess.run(curl + ["-H", "X-Request-ID: mine-42", f"{stack.base}/health/liveliness"],
                          capture_output=True, text=True, check=True)
    lines = done.stdout.lower().splitlines()
    assert lines[0].startswith("http/2 200"), done.stdout
    assert lines[-1] == "2"
    assert any(h.startswith("strict-transport-security: max-age=") for h in lines), done.stdout
    assert "x-request-id: mine-42" in lines, done.stdout
    generated = subprocess.run(curl + [f"{stack.base}/health/liveliness"], capture_output=True, text=True, check=True)
    ids = [h.split(":", 1)[1].strip() for h in generated.stdout.lower().splitlines() if h.startswith("x-request-id:")]
    assert len(ids) == 1 and len(ids[0]) == 32, generated.stdout  # nginx's $request_id
    plain = httpx.get(f"http://localhost:{stack.http_port}/v1/models?x=1", follow_redirects=False)
    assert plain.status_code == 301
    assert plain.headers["location"] == f"https://localhost:{stack.https_port}/v1/models?x=1"
    # Only the local CA's certificate is presented: a client without it refuses the connection.
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{stack.base}/health/liveliness")


async def test_nginx_refusals_are_openai_errors(stack: Stack):
    key = await stack.key()
    transport = httpx.AsyncHTTPTransport(verify=ssl.create_default_context(cafile=stack.ca), local_address="127.0.0.41", retries=0,
                                         limits=httpx.Limits(max_connections=100))
    client = openai.AsyncOpenAI(base_url=stack.base + "/v1", api_key=key, max_retries=0,
                                http_client=httpx.AsyncClient(transport=transport, timeout=30))
    results = await asyncio.gather(*(client.models.list() for _ in range(45)), return_exceptions=True)
    limited = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert [r for r in results if isinstance(r, Exception) and not isinstance(r, openai.RateLimitError)] == []
    # 10 r/s with a burst of 20 queued: the rest of 45 at once are refused by nginx, as JSON.
    assert 10 <= len(limited) <= 25, len(limited)
    err = limited[0]
    assert err.status_code == 429
    assert err.body["code"] == "proxy_rate_limited" and err.body["type"] == "rate_limit_error"
    assert "too many requests" in err.message
    assert err.response.headers["retry-after"] == "1"
    assert err.response.headers["content-type"].startswith("application/json")
    await client.close()
    await asyncio.sleep(2.5)  # the address's bucket drains
    async with stack.client("127.0.0.42") as c:
        big = await c.post("/v1/chat/completions", content=b"x" * (6 * 1024 * 1024), headers=bearer(key))
    assert big.status_code == 413
    assert big.json()["error"]["code"] == "request_too_large"


async def test_connection_limit_refusal_is_an_openai_error(stack: Stack):
    """limit_conn's refusal (503, proxy_connection_limit), with the stack's nginx reloaded at 2
    connections per address instead of 100 for the length of this test."""
    key = await stack.key()
    conf = stack.dir / "keystile.conf"
    original = conf.read_text()
    assert "limit_conn keystile_conn 100;" in original
    reload = ["nginx", "-p", str(stack.dir), "-c", str(stack.dir / "nginx.conf"), "-s", "reload"]
    conf.write_text(original.replace("limit_conn keystile_conn 100;", "limit_conn keystile_conn 2;"))
    subprocess.run(reload, check=True)
    await asyncio.sleep(1)
    body = {"model": "slow", "stream": True, "messages": [{"role": "user", "content": "a b c d e f g h"}]}
    try:
        async with stack.client("127.0.0.43") as c:
            async def stream() -> tuple[int, str, str | None]:
                async with c.stream("POST", "/v1/chat/completions", json=body, headers=bearer(key)) as r:
                    return r.status_code, (await r.aread()).decode(), r.headers.get("retry-after")
            results = await asyncio.gather(*(stream() for _ in range(4)))
    finally:
        conf.write_text(original)
        subprocess.run(reload, check=True)
        await asyncio.sleep(1)
    refused = [(text, after) for status, text, after in results if status == 503]
    assert sorted(status for status, _, _ in results) == [200, 200, 503, 503], results
    error = json.loads(refused[0][0])["error"]
    assert error["code"] == "proxy_connection_limit" and error["type"] == "service_unavailable"
    assert refused[0][1] == "1"


async def test_rate_limit_holds_exactly_across_instances(stack: Stack):
    key = await stack.key(rpm_limit=6)
    await fresh_window(need_s=15)
    ids = {f"rl-{uuid.uuid4().hex}" for _ in range(12)}
    async with stack.client("127.0.0.11") as c:
        answers = await asyncio.gather(*(c.post("/v1/chat/completions", json=CHAT,
                                                headers={**bearer(key), "X-Request-ID": rid}) for rid in ids))
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [200] * 6 + [429] * 6, [r.text for r in answers]
    refused = [r.json()["error"] for r in answers if r.status_code == 429]
    assert all(e["type"] == "rate_limit_error" and e["code"] != "proxy_rate_limited" for e in refused), refused
    # Both instances served this burst, and they shared one count.
    assert len(set(upstreams_of(stack, ids))) == 2, upstreams_of(stack, ids)


async def test_key_blocked_through_one_instance_is_refused_by_the_other_within_a_second(stack: Stack):
    key = await stack.key()
    one, two = stack.instance_url(1), stack.instance_url(2)
    async with httpx.AsyncClient(timeout=10) as c:
        for url in (one, two):  # both have the key in their caches
            assert (await c.get(url + "/v1/models", headers=bearer(key))).status_code == 200
        r = await c.post(one + "/key/block", json={"key": key}, headers=bearer(stack.master_key))
        assert r.status_code == 200, r.text
        blocked_at = time.monotonic()
        while (status := (await c.get(two + "/v1/models", headers=bearer(key))).status_code) == 200:
            assert time.monotonic() - blocked_at < 1.0, "the other instance still accepts the blocked key"
            await asyncio.sleep(0.02)
    assert status == 403
    async with stack.client("127.0.0.12") as c:
        through = await asyncio.gather(*(c.post("/v1/chat/completions", json=CHAT, headers=bearer(key))
                                         for _ in range(4)))
    assert [r.status_code for r in through] == [403] * 4
    assert through[0].json()["error"]["code"] == "key_blocked"


async def test_client_addresses_are_believed_from_nginx_only(stack: Stack):
    """auth_failures_per_minute is 3 per instance: the failed-auth throttle must see each client's
    own address through nginx, and nobody may pick an address by sending X-Forwarded-For."""
    bad = bearer("sk-" + "x" * 43)
    async with stack.client("127.0.0.21") as c:
        for attempt in range(1, 9):
            r = await c.get("/v1/models", headers=bad)
            if r.status_code == 429:
                break
            assert r.status_code == 401, r.text
        assert r.status_code == 429 and r.json()["error"]["code"] == "auth_throttled", r.text
        assert attempt <= 7  # 3 failures on each instance, then refused
    async with stack.client("127.0.0.22") as c:  # another address, claiming to be the throttled one
        r = await c.get("/v1/models", headers={**bad, "X-Forwarded-For": "127.0.0.21"})
        assert r.status_code == 401, r.text
    one = stack.instance_url(1)
    # From nginx's address (a trusted proxy) the forwarded address counts: instance 1 throttles .21.
    async with httpx.AsyncClient(timeout=10) as c:
        for _ in range(4):
            r = await c.get(one + "/v1/models", headers={**bad, "X-Forwarded-For": "127.0.0.21"})
            if r.status_code == 429:
                break
        assert r.status_code == 429, r.text
    # From any other address X-Forwarded-For is ignored.
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.23")
    async with httpx.AsyncClient(transport=transport, timeout=10) as c:
        r = await c.get(one + "/v1/models", headers={**bad, "X-Forwarded-For": "127.0.0.21"})
        assert r.status_code == 401, r.text


async def test_streams_arrive_chunk_by_chunk_through_nginx(stack: Stack):
    key = await stack.key()
    body = {"model": "slow", "stream": True, "messages": [{"role": "user", "content": "one two three four five"}]}
    async with stack.client("127.0.0.13", headers={"Accept-Encoding": "gzip"}) as c:
        started = time.monotonic()
        async with c.stream("POST", "/v1/chat/completions", json=body, headers=bearer(key)) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            assert "content-encoding" not in r.headers  # never gzipped
            arrivals = [time.monotonic() - started async for line in r.aiter_lines() if line.startswith("data: {")]
    # The fake upstream waits 0.2 s before each of its 6 words ("echo:" + five): relayed as they come,
    # the chunks arrive spread over about a second; buffered, they would arrive together at the end.
    assert len(arrivals) == 6
    assert arrivals[-1] - arrivals[0] > 0.6, arrivals
    assert all(later > earlier for earlier, later in zip(arrivals, arrivals[1:])), arrivals


async def test_metrics_of_both_instances_add_up_to_the_requests_sent(stack: Stack):
    """Each instance exposes its own figures (Prometheus scrapes each); summed over both they count
    every request sent through nginx: answered, streamed, refused by a limit shared through Redis,
    unknown model, failed upstream."""
    from .test_observe import scrape, total

    def both() -> list[dict]:
        return [scrape(stack.instance_url(i), stack.master_key) for i in (1, 2)]

    def delta(name: str, **match) -> float:
        return sum(total(a, name, **match) - total(b, name, **match) for a, b in zip(after, before))

    limited = await stack.key(rpm_limit=3)
    before = both()
    sent: dict[str, int] = {}
    async with stack.client("127.0.0.14") as c:
        async def post(key: str, body: dict) -> None:
            r = await c.post("/v1/chat/completions", json=body, headers=bearer(key))
            sent[str(r.status_code)] = sent.get(str(r.status_code), 0) + 1

        for _ in range(6):
            await post(stack.master_key, CHAT)
            await post(stack.master_key, {**CHAT, "stream": True})
        for _ in range(5):
            await post(limited, CHAT)
        await post(stack.master_key, {**CHAT, "model": "nope"})
        await post(stack.master_key, {**CHAT, "model": "failing"})
    after = both()
    assert sent == {"200": 15, "429": 2, "404": 1, "502": 1}, sent
    for status, n in sent.items():
        assert delta("keystile_requests_total", status=status) == n, status
    assert delta("keystile_time_to_first_token_seconds_count") == 6
    assert delta("keystile_limit_refusals_total", kind="rpm", scope="key") == 2
    assert delta("keystile_upstream_errors_total", model="failing") == 3  # num_retries 2: three attempts
    # nginx spread the requests over both instances.
    assert all(total(a, "keystile_requests_total") > total(b, "keystile_requests_total") for a, b in zip(after, before))


async def _load(stack: Stack, key: str, source: str, seconds: float, ids: set[str], workers: int = 4,
                cut: list[str] | None = None) -> dict[str, int]:
    """`workers` clients posting one request after another for `seconds`: each answered request's id
    and status. A request whose answer broke off (the instance that had begun to send it was killed)
    is put in `cut` when given (and the worker goes on, as the SDKs retry such a request); without
    `cut` its transport error fails the load."""
    answered: dict[str, int] = {}
    deadline = time.monotonic() + seconds

    async def worker(c: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            rid = f"load-{uuid.uuid4().hex[:27]}"  # 32 characters: the usage record's id begins with it
            ids.add(rid)
            try:
                r = await c.post("/v1/chat/completions", json=CHAT, headers={**bearer(key), "X-Request-ID": rid})
            except httpx.TransportError:
                if cut is None:
                    raise
                cut.append(rid)
                continue
            answered[rid] = r.status_code

    async with stack.client(source, timeout=60) as c:
        await asyncio.gather(*(worker(c) for _ in range(workers)))
    return answered


async def _records(stack: Stack, key: str, expect: set[str], wait_s: float = 15) -> set[str]:
    """The request ids (up to the gateway's own suffix) of this key's usage records in the database,
    waiting up to wait_s for the writers to catch up with `expect`."""
    deadline = time.monotonic() + wait_s
    async with stack.client() as c:
        while True:
            r = await c.get("/spend/logs", params={"api_key": key, "size": 1000}, headers=bearer(stack.master_key))
            assert r.status_code == 200, r.text
            found = {row["request_id"].rsplit("-", 1)[0] for row in r.json()["data"]}
            if expect <= found or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.25)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
async def test_instance_gone_under_load(stack: Stack, sig: int):
    """SIGTERM (docker stop, systemd, a rolling restart) or SIGKILL of one instance under load: nginx
    answers every request (one the dead instance never answered is tried on the other), and every
    answered request is accounted. After SIGKILL, the records the killed process had not written
    to the database yet are in its usage journal, replayed when an instance starts again.

    SIGKILL can cut an answer the killed process had begun to send (nginx had passed its headers
    on, so it cannot try the request elsewhere): at most one per client then in flight (the SDKs
    retry such a request). A cut request may be accounted or not: the upstream did its work."""
    key = await stack.key()
    source = "127.0.0.31" if sig == signal.SIGTERM else "127.0.0.32"
    ids: set[str] = set()
    cut: list[str] = []
    load = asyncio.create_task(_load(stack, key, source, seconds=5, ids=ids,
                                     cut=cut if sig == signal.SIGKILL else None))
    await asyncio.sleep(1.5)
    stack.kill(2, sig)
    answered = await load
    try:
        assert len(answered) > 20
        assert set(answered.values()) == {200}, answered
        assert len(cut) <= 4, cut  # four clients: at most one answer each in flight at the kill
        survivor = stack.instance_url(1).removeprefix("http://")
        # The upstream field lists every instance tried ("dead, survivor" for a request moved over).
        assert any(u.split(", ")[-1] == survivor for u in upstreams_of(stack, ids))
    finally:
        stack.wait_gone(2)
        stack.run("up")  # back to two instances; a new one replays a killed one's journal
    accounted = await _records(stack, key, set(answered))
    assert set(answered) <= accounted, set(answered) - accounted
    assert accounted <= set(answered) | set(cut), accounted - set(answered) - set(cut)
